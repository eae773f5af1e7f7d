"""Image sources for a build: a folder of image files, or a `datasets` dataset (streamed when large).

Every source yields `ImageItem`s in a fixed order with a stable string id, *without* decoding the image; the
builder decodes only the images it has not finished, so a resumed run does not decode finished images again. It
does hash every image's bytes (`ImageItem.digest()`): a finished result counts only for the same content.
An image that cannot be decoded raises `UnreadableImageError` from `ImageItem.load()`; the builder counts and
skips it.
"""

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class UnreadableImageError(ValueError):
    """An image file or dataset row that does not decode to an image."""


@dataclass
class ImageItem:
    """One image of the build: its position in the source, its id, a deferred decoder, and (once computed by the
    builder) the hash of its content."""

    index: int
    image_id: str
    loader: Callable[[], Any]
    content_sha256: str | None = None

    @property
    def key(self) -> str:
        """A filesystem-safe key for the per-image result file, unique per id."""
        return hashlib.sha1(self.image_id.encode("utf-8")).hexdigest()[:20]

    def digest(self) -> str | None:
        """SHA-256 of the image's encoded bytes (file or dataset bytes; the pixels for an in-memory image), or None
        when they cannot be read (the image is then reported unreadable when it is loaded)."""
        try:
            return content_sha256(self.loader())
        except Exception:  # unreadable data is reported by load(), with its error
            return None

    def load(self):
        """The image as an RGB `PIL.Image`; raises `UnreadableImageError` when it does not decode."""
        from PIL import Image

        try:
            image = self.loader()
            if isinstance(image, (str, Path)):
                image = Image.open(image)
            elif isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image))
            elif isinstance(image, dict) and (image.get("bytes") or image.get("path")):
                image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
            if not isinstance(image, Image.Image):
                raise TypeError(f"expected an image, got {type(image).__name__}")
            image.load()
            return image.convert("RGB")
        except Exception as err:  # any decoder failure is a property of the data, reported per image
            raise UnreadableImageError(f"image {self.image_id!r}: {type(err).__name__}: {err}") from err


def content_sha256(image: Any) -> str:
    """SHA-256 of an image as a source holds it: a path (the file's bytes), bytes, a `datasets` image dict, or a
    `PIL.Image` (mode, size and pixels)."""
    digest = hashlib.sha256()
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (str, Path)):
        with open(image, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        digest.update(image)
    elif hasattr(image, "tobytes") and hasattr(image, "mode") and hasattr(image, "size"):
        digest.update(f"{image.mode} {image.size}".encode())
        digest.update(image.tobytes())
    else:
        raise TypeError(f"cannot hash an image given as {type(image).__name__}")
    return digest.hexdigest()


def read_id_list(ids: Iterable[str] | str | Path | None) -> list[str] | None:
    """Ids as a list: a sequence as is, or a text file with one id per line (blank lines and `#` comments skipped)."""
    if ids is None:
        return None
    if isinstance(ids, (str, Path)):
        path = Path(ids)
        if not path.is_file():
            raise FileNotFoundError(
                f"The id list {str(path)!r} does not exist (expected a text file, one id per line)."
            )
        return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [str(i) for i in ids]


def folder_images(folder: str | Path, ids: Iterable[str] | str | Path | None = None) -> list[ImageItem]:
    """Image files under `folder` (recursively), sorted by relative path, which is also the id (only paths are held)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}.")
    wanted = read_id_list(ids)
    by_id = {p.relative_to(folder).as_posix(): p for p in files}
    if wanted is not None:
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} requested id(s) are not files under {str(folder)!r} (ids are paths relative to the "
                f"folder), e.g. {missing[:3]}."
            )
        chosen = [(i, by_id[i]) for i in wanted]
    else:
        chosen = list(by_id.items())
    return [
        ImageItem(index=index, image_id=image_id, loader=lambda path=path: path)
        for index, (image_id, path) in enumerate(chosen)
    ]


def dataset_images(
    dataset: str | Any,
    split: str = "train",
    image_column: str = "image",
    id_column: str | None = None,
    ids: Iterable[str] | str | Path | None = None,
    streaming: bool = True,
    config_name: str | None = None,
    revision: str | None = None,
) -> Iterator[ImageItem]:
    """Rows of a `datasets` dataset (a Hub id / local path, or an already loaded (Iterable)Dataset).

    Ids come from `id_column` when given, else `"{split}/{row index}"`. Columns other than the image and id are
    not read. With `ids`, only those rows are yielded, in dataset order.
    """
    if isinstance(dataset, str):
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                "Reading images from a dataset needs the `datasets` package: pip install 'llava-codebook[build]'."
            ) from err
        dataset = datasets.load_dataset(dataset, config_name, split=split, streaming=streaming, revision=revision)
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        for column in [image_column] + ([id_column] if id_column else []):
            if column not in columns:
                raise ValueError(f"The dataset has no column {column!r}; its columns are {columns}.")
        dataset = dataset.select_columns([image_column] + ([id_column] if id_column else []))
    dataset = _undecoded(dataset, image_column)
    wanted = read_id_list(ids)
    wanted_set = set(wanted) if wanted is not None else None
    position = 0
    for row_index, row in enumerate(dataset):
        image_id = str(row[id_column]) if id_column else f"{split}/{row_index}"
        if wanted_set is not None and image_id not in wanted_set:
            continue
        yield ImageItem(index=position, image_id=image_id, loader=lambda value=row[image_column]: value)
        position += 1


def pil_images(images: Iterable[Any], ids: Iterable[str] | None = None) -> Iterator[ImageItem]:
    """In-memory images (PIL images, paths or bytes), ids `"0"`, `"1"`, ... unless given."""
    ids = list(ids) if ids is not None else None
    for index, image in enumerate(images):
        image_id = ids[index] if ids is not None else str(index)
        yield ImageItem(index=index, image_id=image_id, loader=lambda image=image: image)


def _undecoded(dataset, image_column: str):
    """Switch an `Image` column to raw bytes, so that rows are only decoded for images the builder probes."""
    features = getattr(dataset, "features", None) or {}
    feature = features.get(image_column) if hasattr(features, "get") else None
    if feature is None or type(feature).__name__ != "Image" or not getattr(feature, "decode", False):
        return dataset
    import datasets

    return dataset.cast_column(image_column, datasets.Image(decode=False))


def open_image_source(
    images: str | Path | Any,
    *,
    split: str = "train",
    image_column: str = "image",
    id_column: str | None = None,
    ids: Iterable[str] | str | Path | None = None,
    streaming: bool = True,
) -> Iterable[ImageItem]:
    """`images` is a folder, a `datasets` id / path, a loaded dataset, or a list of images."""
    if isinstance(images, (str, Path)) and Path(images).is_dir() and not _looks_like_dataset_dir(Path(images)):
        return folder_images(images, ids)
    if isinstance(images, (list, tuple)):
        return pil_images(images, ids=read_id_list(ids))
    if isinstance(images, (str, Path)):
        return dataset_images(str(images), split, image_column, id_column, ids, streaming)
    return dataset_images(images, split, image_column, id_column, ids, streaming)


def _looks_like_dataset_dir(path: Path) -> bool:
    """A folder saved by `datasets` or holding a dataset script/data files rather than loose images."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
