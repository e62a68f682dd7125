"""Tiny data sets in the ME-GraphAU list layout, written for tests."""
import os

import torch
from PIL import Image


def write_image_lists(root, name="Toy", fold=1, num_train=5, num_test=3, num_aus=3):
    generator = torch.Generator().manual_seed(0)
    os.makedirs(root / "list")
    for part, count in (("train", num_train), ("test", num_test)):
        paths, rows = [], []
        for i in range(count):
            relative = f"subject{i % 2}/{part}_{i}.png"
            os.makedirs(root / "img" / f"subject{i % 2}", exist_ok=True)
            pixels = torch.randint(0, 256, (20, 24, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / "img" / relative)
            paths.append(relative)
            row = torch.randint(0, 2, (num_aus,), generator=generator).tolist()
            rows.append(" ".join(str(v) for v in row[:-1] + [-1 if i == 0 else row[-1]]))
        for kind, lines in (("img_path", paths), ("label", rows)):
            (root / "list" / f"{name}_{part}_{kind}_fold{fold}.txt").write_text(
                "\n".join(lines) + "\n")
