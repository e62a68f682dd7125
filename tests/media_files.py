"""Image and video files for the command-line tests, written with PIL and PyAV."""
import av
import numpy as np
from PIL import Image


def face_like(seed: int, size=(60, 52)) -> Image.Image:
    """A smooth random RGB image (a stand-in for a face crop), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def write_video(path, num_frames: int = 12, rate: int = 10, size=(64, 48)):
    """An MPEG-4 video whose frame ``k`` is a flat grey of level ``20 k`` (mod 256)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(num_frames):
            pixels = np.full((size[1], size[0], 3), (20 * k) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def blank_video_payload(path, out):
    """A copy of the MP4 ``path`` whose frame data (the ``mdat`` box) is zeroed: the container and
    its index are intact, no frame decodes."""
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)
    out.write_bytes(bytes(data))
    return out


def truncate(path, out, keep: float = 0.5):
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def damage_packet(path, out, number: int):
    """A copy of the video ``path`` whose ``number``-th video packet is overwritten with 0xff."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    position, size = packets[number]
    data[position:position + size] = b"\xff" * size
    out.write_bytes(bytes(data))
    return out
