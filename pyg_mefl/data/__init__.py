"""AU names, face graphs (the complete AU graph, edge slots, relation labels) and data sets of
face graphs."""
from .aus import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS
from .datasets import (FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset,
                       TokenFaceDataset, vocabulary_ids)
from .graph import (GraphLayout, complete_au_graph, edge_slots, face_graph, relation_labels,
                    uniform_in_degree)

__all__ = ["BP4D_AUS", "DISFA_AUS", "FaceGraphDataset", "GraphLayout", "ImageListFaceDataset",
           "OPENGRAPHAU_MAIN_AUS", "OPENGRAPHAU_SUB_AUS", "SyntheticFaceDataset",
           "TokenFaceDataset", "complete_au_graph", "edge_slots", "face_graph", "relation_labels",
           "uniform_in_degree", "vocabulary_ids"]
