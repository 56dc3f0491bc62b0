"""A PNG of the waveform peaks (for pages and clients that do not draw the JSON)."""

from pathlib import Path

from PIL import Image, ImageDraw

from .media import Waveform

WIDTH, HEIGHT = 1200, 200
BACKGROUND, FOREGROUND = (255, 255, 255, 0), (37, 99, 235, 255)


def render_png(waveform: Waveform, dest: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
    image = Image.new("RGBA", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    pairs = len(waveform.data) // 2
    middle = height / 2
    if pairs:
        for x in range(width):
            start = x * pairs // width
            end = max((x + 1) * pairs // width, start + 1)
            lows = waveform.data[start * 2 : end * 2 : 2]
            highs = waveform.data[start * 2 + 1 : end * 2 : 2]
            low, high = min(lows), max(highs)
            draw.line(
                [(x, middle - high / 128 * middle), (x, middle - low / 128 * middle)],
                fill=FOREGROUND,
            )
    image.save(dest, format="PNG", optimize=True)
