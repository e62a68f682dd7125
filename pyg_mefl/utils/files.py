"""Writing files so that an interrupted write never leaves a half-written one."""
import os
from pathlib import Path
from typing import Callable, Union


def write_atomically(target: Union[str, os.PathLike], write: Callable[[str], object]) -> None:
    """``write(temporary path)`` beside ``target`` (``<target>.<pid>.tmp``), then the file moved
    onto ``target`` with :func:`os.replace`: a failed or killed write leaves neither a
    half-written ``target`` nor, short of a kill, the temporary file."""
    target = Path(target)
    temporary = f"{target}.{os.getpid()}.tmp"
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
