"""The three AU data sources as PyG datasets, and variable AU sets in one model."""
import os

import pytest
import torch
from torch_geometric.loader import DataLoader

from image_lists import write_image_lists

from pyg_mefl import BP4D_AUS, DISFA_AUS, MEFL, OPENGRAPHAU_MAIN_AUS, face_graph
from pyg_mefl.models.backbones import SmallCNN, build_backbone
from pyg_mefl.data.datasets import (ImageListFaceDataset, SyntheticFaceDataset, TokenFaceDataset,
                               random_split, vocabulary_ids)
from pyg_mefl.train.losses import MEFLLoss
from pyg_mefl import FaceAUModel, au_targets


def _check_graph(data, num_aus):
    assert data.au_id.tolist() == list(range(num_aus))
    assert data.edge_index.shape == (2, num_aus * num_aus)
    source, target = data.y[data.edge_index[0]], data.y[data.edge_index[1]]
    expected = torch.where((source >= 0) & (target >= 0), 2 * target + source, -1)
    assert torch.equal(data.edge_y, expected)


# --- synthetic ---------------------------------------------------------------------------

def test_synthetic_is_seeded_split_and_batches():
    first, again = SyntheticFaceDataset(50, num_aus=5, seed=3), SyntheticFaceDataset(50, 5, seed=3)
    other = SyntheticFaceDataset(50, num_aus=5, seed=4)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.tokens, other.tokens)
    assert first.tokens.shape == (50, 9, 32) and first.labels.shape == (50, 5)
    assert set(first.labels.unique().tolist()) <= {0, 1}
    assert [len(first.subset(s)) for s in ("train", "val", "test")] == [35, 5, 10]
    assert first.au_names == ["AU#0", "AU#1", "AU#2", "AU#3", "AU#4"]
    data = first[0]
    assert data.tokens.shape == (1, 9, 32)
    _check_graph(data, 5)
    batch = next(iter(DataLoader(first.subset("train"), batch_size=4)))
    assert batch.num_graphs == 4 and batch.tokens.shape == (4, 9, 32)
    assert torch.equal(first.subset("train").face_labels(),
                       first.labels[first.split == 0])


def test_synthetic_planted_structure():
    data = SyntheticFaceDataset(400, label_noise=0.0, seed=1)
    # without label noise every face is one of the prototypes; every AU is in one at least
    assert (data.prototypes.sum(0) > 0).all() and (data.prototypes[0] == 0).all()
    faces = {tuple(row) for row in data.labels.tolist()}
    assert faces <= {tuple(row) for row in data.prototypes.tolist()}
    assert data.au_names == list(OPENGRAPHAU_MAIN_AUS)
    with pytest.raises(ValueError, match="num_prototypes"):
        SyntheticFaceDataset(10, num_prototypes=1)
    with pytest.raises(ValueError, match="pairs"):
        SyntheticFaceDataset(10, num_aus=12, num_tokens=4, num_directions=2)


def test_random_split_proportions():
    split = random_split(1000, seed=0)
    assert torch.bincount(split).tolist() == [700, 100, 200]
    assert torch.equal(split, random_split(1000, seed=0))


# --- token-features file ------------------------------------------------------------------

def test_token_file(tmp_path):
    tokens = torch.randn(10, 4, 8)
    labels = torch.randint(-1, 2, (10, 3))
    split = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    path = tmp_path / "faces.pt"
    torch.save({"tokens": tokens, "labels": labels, "split": split,
                "au_names": ["AU1", "AU2", "AU4"]}, path)
    data = TokenFaceDataset.from_file(path)
    assert data.au_names == ["AU1", "AU2", "AU4"] and len(data) == 10
    assert [len(data.subset(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    test = data.subset("test")
    item = test[1]
    assert torch.equal(item.tokens[0], tokens[9]) and torch.equal(item.y, labels[9])
    _check_graph(item, 3)

    torch.save({"tokens": tokens, "labels": labels}, path)  # default seeded 70/10/20 split
    assert torch.bincount(TokenFaceDataset.from_file(path, seed=1).split).tolist() == [7, 1, 2]


def test_token_file_errors(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"tokens": torch.randn(4, 2, 3)}, path)
    with pytest.raises(KeyError, match="bad.pt.*labels"):
        TokenFaceDataset.from_file(path)
    torch.save({"tokens": torch.randn(4, 2, 3), "labels": torch.full((4, 2), 2)}, path)
    with pytest.raises(ValueError, match="bad.pt: labels: expected values 1, 0 or -1"):
        TokenFaceDataset.from_file(path)
    torch.save({"tokens": torch.randn(4, 2, 3), "labels": torch.zeros(3, 2)}, path)
    with pytest.raises(ValueError, match="bad.pt: labels: expected 4 rows"):
        TokenFaceDataset.from_file(path)
    torch.save({"tokens": torch.randn(4, 2, 3), "labels": torch.zeros(4, 2),
                "split": torch.tensor([0, 1, 2, 3])}, path)
    with pytest.raises(ValueError, match="bad.pt: split"):
        TokenFaceDataset.from_file(path)
    torch.save({"tokens": torch.randn(4, 2, 3), "labels": torch.zeros(4, 2),
                "au_names": ["AU1"]}, path)
    with pytest.raises(ValueError, match="au_names"):
        TokenFaceDataset.from_file(path)


# --- images in the ME-GraphAU list layout --------------------------------------------------

def test_image_lists(tmp_path):
    write_image_lists(tmp_path)
    data = ImageListFaceDataset(tmp_path, "Toy", 1, image_size=16, val_fraction=0.2)
    assert len(data) == 8 and data.num_aus == 3 and data.au_names == ["AU#0", "AU#1", "AU#2"]
    assert [len(data.subset(s)) for s in ("train", "val", "test")] == [4, 1, 3]
    assert data.labels[0, 2] == -1 and data.labels[5, 2] == -1  # first row of each list
    item = data[0]
    assert "tokens" not in item and item.image.shape == (1, 3, 16, 16)
    _check_graph(item, 3)

    model = FaceAUModel(MEFL(16, 3, 0, edge_head=True), SmallCNN(16, grid=2))
    batch = next(iter(DataLoader(data.subset("train"), batch_size=4)))
    out = model(batch)
    assert out.probs.shape == (4, 3) and out.edge_logits.shape == (4 * 9, 4)
    assert "tokens" not in batch  # the model does not write into the caller's batch
    loss = MEFLLoss(lam=0.1)(out.probs, au_targets(batch, 3), out.edge_logits, batch.edge_y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_image_list_errors(tmp_path):
    write_image_lists(tmp_path)
    label_file = tmp_path / "list" / "Toy_train_label_fold1.txt"
    lines = label_file.read_text().splitlines()
    label_file.write_text("\n".join(lines[:1] + ["1 0"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"Toy_train_label_fold1\.txt, line 2: expected 3 labels"):
        ImageListFaceDataset(tmp_path, "Toy", 1)
    label_file.write_text("\n".join(lines[:2] + ["1 0 2"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="line 3: labels must be 1, 0 or -1"):
        ImageListFaceDataset(tmp_path, "Toy", 1)
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 1: expected 12 labels"):  # BP4D has 12 AUs
        ImageListFaceDataset(tmp_path, "Toy", 1, au_names=BP4D_AUS)
    with pytest.raises(FileNotFoundError, match="Toy_train_img_path_fold2.txt"):
        ImageListFaceDataset(tmp_path, "Toy", 2)
    os.remove(tmp_path / "img" / "subject1" / "train_3.png")
    with pytest.raises(FileNotFoundError, match="Toy_train_img_path_fold1.txt, line 4"):
        ImageListFaceDataset(tmp_path, "Toy", 1)


def test_resnet50_without_torchvision(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install pyg_mefl\[vision\]"):
        build_backbone("resnet50", 64)
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg", 64)


def test_small_cnn_tokens():
    cnn = SmallCNN(24, grid=3)
    assert cnn(torch.randn(2, 3, 40, 40)).shape == (2, 9, 24)
    with pytest.raises(ValueError, match="images"):
        cnn(torch.randn(2, 40, 40))


# --- variable AU sets ------------------------------------------------------------------------

def test_mixed_au_sets_batch_like_alone_and_train():
    torch.manual_seed(0)
    channels, num_tokens = 16, 5
    bp4d = vocabulary_ids(BP4D_AUS, OPENGRAPHAU_MAIN_AUS)
    disfa = vocabulary_ids(DISFA_AUS, OPENGRAPHAU_MAIN_AUS)
    assert OPENGRAPHAU_MAIN_AUS[int(disfa[4])] == "AU9"
    with pytest.raises(KeyError, match="AU99"):
        vocabulary_ids(["AU1", "AU99"], OPENGRAPHAU_MAIN_AUS)
    graphs = [face_graph(torch.randn(num_tokens, channels),
                         labels=torch.randint(-1, 2, (len(ids),)), au_ids=ids)
              for ids in (bp4d, disfa, bp4d, disfa, disfa)]
    model = MEFL(channels, 27, num_sub_aus=0, edge_head=True)
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))

    # one training step on the mixed batch: finite loss and gradients despite the NaN outputs
    out = model(batch, return_edges=True)
    target = au_targets(batch, 27)
    assert not (torch.isnan(out.probs) & (target != -1)).any()  # NaN only where AUs are absent
    loss = MEFLLoss(lam=0.05)(out.probs, target, out.edge_logits, batch.edge_y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        mixed = model(batch)
        for row, graph in enumerate(graphs):
            alone = model(next(iter(DataLoader([graph], batch_size=1))))
            assert torch.allclose(mixed[row], alone[0], atol=1e-6, equal_nan=True)
            present = torch.zeros(27, dtype=torch.bool)
            present[graph.au_id] = True
            assert torch.equal(~torch.isnan(mixed[row]), present)


def test_dataset_au_ids_place_columns_in_vocabulary():
    ids = vocabulary_ids(DISFA_AUS, OPENGRAPHAU_MAIN_AUS)
    data = TokenFaceDataset(torch.randn(6, 3, 8), torch.randint(0, 2, (6, 8)),
                            au_names=DISFA_AUS, au_ids=ids)
    batch = next(iter(DataLoader(data, batch_size=6)))
    target = au_targets(batch, 27)
    assert torch.equal(target[:, ids], data.labels)
    assert (target[:, [i for i in range(27) if i not in ids.tolist()]] == -1).all()
    with pytest.raises(ValueError, match="au_ids"):
        TokenFaceDataset(torch.randn(6, 3, 8), torch.zeros(6, 8), au_ids=[0, 1])
