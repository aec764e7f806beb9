"""Tools declared once: the spec, its JSON schema and OpenAI form, argument checking."""

from typing import Annotated

from puyu_jax.agent import Image, Tool, ToolSpec, tool
from puyu_jax.agent.tool import ToolResult


@tool
def area(width: Annotated[float, "in metres"], height: float, label: str = "room", square: bool = False) -> float:
    """Area of a rectangle.

    More text that is not part of the description."""
    return width * height


class Thumb(Tool):
    name = "thumb"
    description = "Makes a thumbnail."

    def run(self, image: Annotated[Image, "the picture"], size: int = 64) -> tuple[Image, str]:
        return image, f"{size}px"


def test_spec_from_signature():
    s = area.spec
    assert (s.name, s.description) == ("area", "Area of a rectangle.")
    assert [(p.name, p.type, p.required) for p in s.params] == [
        ("width", "number", True), ("height", "number", True), ("label", "text", False), ("square", "bool", False)]
    assert s.json_schema() == {
        "type": "object",
        "properties": {"width": {"type": "number", "description": "in metres"}, "height": {"type": "number"},
                       "label": {"type": "string", "default": "room"}, "square": {"type": "boolean", "default": False}},
        "required": ["width", "height"],
    }
    assert [r.type for r in s.returns] == ["number"]
    assert s.openai()["function"]["parameters"] == s.json_schema()
    assert Thumb().spec.json_schema()["properties"]["image"] == {
        "type": "string", "format": "image", "description": "the picture (image file path)"}
    assert [r.type for r in Thumb().spec.returns] == ["image", "text"]


def test_spec_round_trips_through_the_wire_form():
    for spec in (area.spec, Thumb().spec):
        assert ToolSpec.from_dict(spec.to_dict()) == spec


def test_calls_coerce_and_report_errors_as_results(tmp_path):
    assert area({"width": "2.5", "height": 4}).outputs == (10.0,)
    assert area({"width": 2, "height": 3}).text() == "6"
    bad = [({"width": 1}, "needs the argument 'height'"), ({"width": "wide", "height": 1}, "expected a number"),
           ({"width": 1, "height": 1, "depth": 2}, "no parameter(s) ['depth']"),
           ({"width": 1, "height": 1, "square": "maybe"}, "expected true or false"), ("3", "must be a JSON object")]
    for args, message in bad:
        r = area(args)
        assert not r.ok and message in r.error, (args, r.error)
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG")
    r = Thumb()({"image": str(img), "size": "32"})
    assert r.outputs == (Image(str(img)), "32px") and r.text() == f"[image: {img}]\n32px"
    assert "no such image file" in Thumb()({"image": str(tmp_path / "missing.png")}).error


def test_a_failing_tool_gives_an_error_result():
    @tool
    def boom(x: int) -> int:
        """Fails."""
        return 1 // (x - x)

    assert boom({"x": 3}) == ToolResult(error="ZeroDivisionError: integer division or modulo by zero")
