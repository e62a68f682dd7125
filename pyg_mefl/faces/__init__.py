"""Faces in photos and videos: detection, the crops each published source makes, tracking
through a video, and the pipeline from pictures of people to AU probabilities per face."""
from .crops import (DEFAULT_MARGIN, aligned_face_crop, mexca_face_crops, similarity_transform,
                    square_box, square_face_crop)
from .detector import MEXCA_DETECTOR, FaceDetector, FrameFaces
from .pipeline import LANDMARK_NAMES, FaceAUPipeline, FaceRow
from .tracker import FaceTracker, box_iou

__all__ = ["DEFAULT_MARGIN", "LANDMARK_NAMES", "MEXCA_DETECTOR", "FaceAUPipeline", "FaceDetector",
           "FaceRow", "FaceTracker", "FrameFaces", "aligned_face_crop", "box_iou",
           "mexca_face_crops", "similarity_transform", "square_box", "square_face_crop"]
