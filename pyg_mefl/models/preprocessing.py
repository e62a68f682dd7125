"""The published evaluation preprocessing of each source (SPEC §10): a PIL face image to the
``[3, 224, 224]`` tensor its models read."""
from ..pretrained.layouts import check_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE, RESIZE = 224, 256


def published_transform(source: str):
    """The eval transform of ``source`` as a ``torchvision.transforms.Compose``:

    - ``"opengraphau"``, ``"me-graphau"`` (their ``image_eval`` / ``image_test``): ``Resize(256)``
      (shorter side, bilinear), ``CenterCrop(224)``, ``ToTensor``, ImageNet ``Normalize``;
    - ``"mexca"``: the face crop resized to 224x224 as facenet's MTCNN hands it over, with MTCNN's
      standardisation :math:`(x - 127.5) / 128` on 0-255 pixels, then ImageNet ``Normalize``
      (mexca applies both).
    """
    source = check_source(source)
    if source is None:
        raise ValueError("source: expected one of the published sources, got None")
    try:
        from torchvision import transforms
    except ImportError as error:
        raise ModuleNotFoundError("the published preprocessing needs torchvision: "
                                  "pip install pyg_mefl[vision]", name="torchvision") from error
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if source == "mexca":
        mtcnn_standardization = transforms.Normalize((0.5,) * 3, (128 / 255,) * 3)
        return transforms.Compose([transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
                                   transforms.ToTensor(), mtcnn_standardization, normalize])
    return transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(IMAGE_SIZE),
                               transforms.ToTensor(), normalize])
