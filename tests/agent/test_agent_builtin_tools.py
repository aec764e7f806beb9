"""The built-in tools on real inputs: calculator, BM25 search, espeak-ng, tesseract, Pillow."""

import wave

import pytest
from PIL import Image as PILImage
from PIL import ImageDraw

from puyu_jax.agent import Audio, Image
from puyu_jax.agent.tools import (
    OCR, Calculator, DocumentSearch, ImageCrop, ImageDrawBox, ImageInfo, ImageResize, TextToSpeech, calculate,
    load_tools,
)


@pytest.mark.parametrize("expr, want", [
    ("0.1 + 0.2", "0.3"), ("2^100", "1267650600228229401496703205376"), ("1/3 + 1/6", "0.5"), ("2/7", "2/7 (≈ 0.2857142857142857142857142857)"),
    ("1/3", "1/3 (≈ 0.3333333333333333333333333333)"), ("(1 + 2) * 3 - 4 / 2", "7"), ("sqrt(144/25)", "2.4"),
    ("factorial(25)", "15511210043330985984000000"), ("-7 // 2", "-4"), ("7 % 3", "1"), ("gcd(12, 18)", "6"),
    ("sqrt(2)", "≈ 1.4142135623731"), ("sin(pi / 2)", "≈ 1"), ("3 × 4 ÷ 6", "2"),
])
def test_calculator_is_exact(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, why", [
    ("__import__('os')", "unknown function __import__()"), ("__import__('os').system('true')", "not allowed"), ("x + 1", "not allowed"),
    ("(1).__class__", "not allowed"), ("[1, 2]", "not allowed"), ("10 ** 10 ** 10", "too large"),
    ("1 / 0", "division by zero"), ("2 +", "cannot parse"), ("lambda: 1", "not allowed"),
])
def test_calculator_refuses_code_and_nonsense(expr, why):
    r = Calculator()({"expression": expr})
    assert not r.ok and why in r.error


def test_document_search_ranks_by_bm25(tmp_path):
    (tmp_path / "jax.md").write_text("JAX transforms: jit compiles, grad differentiates.\n\nvmap vectorizes functions.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cooking.txt").write_text("Boil the pasta for ten minutes.\n\nSalt the water generously.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG not text")
    search = DocumentSearch(tmp_path)
    assert len(search.passages) == 4
    hits = search.search("how long to boil pasta", k=2)
    assert hits[0][0].source == "sub/cooking.txt" and hits[0][0].text.startswith("Boil")
    out = search({"query": "vectorizes functions", "k": 1}).text()
    assert out.startswith("[1] (jax.md, score") and "vmap" in out
    assert "no passage matches" in search({"query": "zebra"}).text()
    with pytest.raises(ValueError, match="needs a folder"):
        load_tools("search")


def test_text_to_speech_writes_a_wav(tmp_path):
    r = TextToSpeech(tmp_path)({"text": "The answer is 17411."})
    (audio,) = r.outputs
    assert isinstance(audio, Audio) and audio.path.startswith(str(tmp_path))
    with wave.open(audio.path) as w:
        assert w.getnframes() / w.getframerate() > 0.5


def _text_image(path, text="HELLO 17411"):
    im = PILImage.new("RGB", (420, 100), "white")
    ImageDraw.Draw(im).text((12, 25), text, fill="black", font_size=44)
    im.save(path)
    return str(path)


def test_ocr_reads_rendered_text(tmp_path):
    assert OCR()({"image": _text_image(tmp_path / "t.png")}).text() == "HELLO 17411"


def test_image_tools(tmp_path):
    src = _text_image(tmp_path / "t.png")
    (small,) = ImageResize(tmp_path)({"image": src, "width": 210}).outputs
    assert isinstance(small, Image) and PILImage.open(small.path).size == (210, 50)
    (crop,) = ImageCrop(tmp_path)({"image": src, "left": 0, "top": 0, "right": 100, "bottom": 40}).outputs
    assert PILImage.open(crop.path).size == (100, 40)
    assert "not inside" in ImageCrop(tmp_path)({"image": src, "left": 0, "top": 0, "right": 999, "bottom": 40}).error
    (boxed,) = ImageDrawBox(tmp_path)({"image": src, "left": 5, "top": 5, "right": 60, "bottom": 60,
                                       "color": "#ff0000"}).outputs
    assert PILImage.open(boxed.path).convert("RGB").getpixel((5, 30)) == (255, 0, 0)
    assert ImageInfo()({"image": src}).text().splitlines()[:3] == ["format: PNG", "size: 420x100", "mode: RGB"]


def test_load_tools_by_name():
    names = [t.spec.name for t in load_tools("python, calculator,tts,ocr,image")]
    assert names == ["python", "calculator", "text_to_speech", "ocr", "image_resize", "image_crop", "image_draw_box",
                     "image_info"]
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        load_tools("nope")
