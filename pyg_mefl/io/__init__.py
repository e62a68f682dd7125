"""Reading photos and videos: files and folders to RGB frames with their times."""
from .media import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Frame, InputError, Source,
                    collect_sources, estimate_video_frames, read_image, read_video, to_rgb,
                    video_info)

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Frame", "InputError", "Source",
           "collect_sources", "estimate_video_frames", "read_image", "read_video", "to_rgb",
           "video_info"]
