"""Writing RGB frames to a video file (PyAV's encoder), each at its own time."""
import math
from fractions import Fraction
from typing import Optional

import numpy as np
from PIL import Image

TIME_BASE = Fraction(1, 90000)  # MPEG's clock: frame times to 11 microseconds


class VideoWriter:
    """An H.264 video (``yuv420p``, which most players read) of RGB frames written one at a
    time, so memory stays flat in the video's length. Each frame is shown at the time it is
    given (seconds from the first frame), so a variable frame rate is kept; ``rate`` is the
    nominal frame rate the stream declares. A frame of odd width or height is padded with one
    black column or row (the encoder needs even sizes).

    Args:
        path (str): The file to write; its extension picks the container (``.mp4``, ``.mkv``).
        rate (float or Fraction): Frames per second.
        codec (str): PyAV's encoder name.
        crf (int): x264's quality (lower is better; 18-23 look alike to most eyes).
    """

    def __init__(self, path: str, rate, codec: str = "libx264", crf: int = 20):
        import av
        self.path = path
        self.rate = Fraction(rate).limit_denominator(1001000) if rate else Fraction(25)
        self.container = av.open(path, "w")
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = TIME_BASE
        if codec == "libx264":
            self.stream.options = {"crf": str(crf)}
        self.size: Optional[tuple] = None
        self.first: Optional[float] = None
        self.last_pts = -1
        self.frames = 0

    def write(self, image: Image.Image, time: Optional[float] = None) -> None:
        """Add ``image`` (RGB) shown at ``time`` seconds (None or out of order: one frame period
        after the previous frame)."""
        import av
        if self.size is None:
            self.size = (image.width + image.width % 2, image.height + image.height % 2)
            self.stream.width, self.stream.height = self.size
        if image.size != self.size:
            canvas = Image.new("RGB", self.size)
            canvas.paste(image.crop((0, 0, min(image.width, self.size[0]),
                                     min(image.height, self.size[1]))), (0, 0))
            image = canvas
        step = round(1 / (self.rate * TIME_BASE))
        if time is None or not math.isfinite(time):
            pts = self.last_pts + step
        else:
            self.first = time if self.first is None else self.first
            pts = max(round((time - self.first) / TIME_BASE), self.last_pts + 1)
        frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
        frame.pts, frame.time_base = pts, TIME_BASE
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        if self.size is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        self.container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
