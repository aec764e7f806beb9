"""Multimodal tools on Debian programs and Pillow: text-to-speech, OCR, image edits and metadata.

Every tool writing a file puts it in its `out_dir` (a fresh temporary folder by default) and
returns it typed (`Audio`, `Image`), so the tool server can hand it out as a download.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from puyu_jax.agent.tool import Audio, Image, Tool

__all__ = ["TextToSpeech", "OCR", "ImageResize", "ImageCrop", "ImageDrawBox", "ImageInfo", "IMAGE_TOOLS"]


def _program(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise FileNotFoundError(f"{name} is not installed; on Debian: apt-get install -y {package}")
    return exe


class _FileTool(Tool):
    """A tool writing its outputs under `out_dir`."""

    def __init__(self, out_dir: str | Path | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"puyu-{self.name}-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _new_path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}-{uuid.uuid4().hex[:10]}{suffix}"


class TextToSpeech(_FileTool):
    """espeak-ng to a WAV file."""

    name = "text_to_speech"
    description = "Reads a text aloud and saves the speech as a WAV audio file."

    def run(self, text: Annotated[str, "what to say"],
            voice: Annotated[str, "espeak-ng voice, e.g. en, en-us, zh, fr"] = "en") -> Audio:
        exe = _program("espeak-ng", "espeak-ng")
        out = self._new_path(".wav")
        proc = subprocess.run([exe, "-v", voice, "-w", str(out), "--stdin"], input=text.encode(),
                              capture_output=True, timeout=60)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
        return Audio(str(out))


class OCR(Tool):
    """tesseract on an image."""

    name = "ocr"
    description = "Recognizes the text in an image (OCR) and returns it."

    def run(self, image: Annotated[Image, "the image to read"],
            lang: Annotated[str, "tesseract language(s), e.g. eng or eng+chi_sim"] = "eng") -> str:
        exe = _program("tesseract", "tesseract-ocr")
        proc = subprocess.run([exe, image.path, "stdout", "-l", lang], capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"tesseract failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace").strip()


def _open(image: Image):
    from PIL import Image as PILImage

    return PILImage.open(image.path)


class ImageResize(_FileTool):
    name = "image_resize"
    description = "Resizes an image to the given width and height in pixels (0 keeps the aspect ratio)."

    def run(self, image: Image, width: Annotated[int, "pixels, 0 = from height"],
            height: Annotated[int, "pixels, 0 = from width"] = 0) -> Image:
        with _open(image) as im:
            w, h = im.size
            if width <= 0 and height <= 0:
                raise ValueError("give a width or a height > 0")
            width = width if width > 0 else round(w * height / h)
            height = height if height > 0 else round(h * width / w)
            out = self._new_path(".png")
            im.resize((width, height)).save(out)
        return Image(str(out))


class ImageCrop(_FileTool):
    name = "image_crop"
    description = "Crops an image to the box (left, top, right, bottom) in pixels."

    def run(self, image: Image, left: int, top: int, right: int, bottom: int) -> Image:
        with _open(image) as im:
            if not (0 <= left < right <= im.width and 0 <= top < bottom <= im.height):
                raise ValueError(f"box ({left}, {top}, {right}, {bottom}) is not inside the {im.width}x{im.height} image")
            out = self._new_path(".png")
            im.crop((left, top, right, bottom)).save(out)
        return Image(str(out))


class ImageDrawBox(_FileTool):
    name = "image_draw_box"
    description = "Draws a rectangle (and an optional label) on an image and returns the new image."

    def run(self, image: Image, left: int, top: int, right: int, bottom: int,
            label: Annotated[str, "text written at the box's corner"] = "",
            color: Annotated[str, "a colour name or #rrggbb"] = "red") -> Image:
        from PIL import ImageDraw

        with _open(image) as im:
            im = im.convert("RGB")
            draw = ImageDraw.Draw(im)
            draw.rectangle((left, top, right, bottom), outline=color, width=3)
            if label:
                draw.text((left + 4, top + 4), label, fill=color)
            out = self._new_path(".png")
            im.save(out)
        return Image(str(out))


class ImageInfo(Tool):
    name = "image_info"
    description = "Returns an image's format, size, colour mode and EXIF metadata."

    def run(self, image: Image) -> str:
        from PIL.ExifTags import TAGS

        with _open(image) as im:
            lines = [f"format: {im.format}", f"size: {im.width}x{im.height}", f"mode: {im.mode}"]
            for tag, value in im.getexif().items():
                lines.append(f"{TAGS.get(tag, tag)}: {value}")
        return "\n".join(lines)


IMAGE_TOOLS = (ImageResize, ImageCrop, ImageDrawBox, ImageInfo)
