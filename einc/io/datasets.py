"""The public data sets einc's examples and benchmarks use: finding them, and fetching them.

``find(name, given)`` answers where a data set is, in this order: the path a command was given
(``--data``), the cache (``$EINC_DATA``, default ``~/.cache/einc/data``), then ``../shared/data``
beside the project (the developers' copy); otherwise a ``DataMissing`` error that says in one line
how to get it: ``einc data fetch NAME``.

``fetch(name)`` downloads a data set from its canonical public source (a list of mirrors), checks
every file against its published size and SHA-256 (``einc.io.download``: resumable, atomic), decodes
it, checks the decoded arrays against the SHA-256 of the same arrays built from the copy the
project was developed with (``CONTENT_SHA256``; ``content_sha256`` says how they are hashed), and
only then writes it, atomically, in the format ``--data`` reads:

- ``mnist`` → ``mnist.npz`` with ``x_train`` (60000, 784), ``y_train``, ``x_test`` (10000, 784),
  ``y_test``, all uint8 (from the four IDX files, as torchvision and TensorFlow fetch them);
- ``debd/NAME`` → ``debd/NAME/{train,valid,test}.csv.gz``: the DEBD repository's
  ``NAME.{split}.data`` files (comma-separated 0/1, one sample a line), gzip-compressed,
  byte-identical inside.

A data set is a table entry (``DATASETS``): its files, mirrors and checksums, and the converter
that turns its downloads into arrays and files. ``$EINC_DATA_MIRRORS`` (base URLs separated by
spaces) replaces the canonical mirrors, e.g. with a local copy; file URLs are then
``BASE/KEY/FILE`` (``BASE/mnist/train-images-idx3-ubyte.gz``, ``BASE/debd/nltcs/nltcs.train.data``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from einc.errors import DataError
from einc.io.download import download, sync_folder
from einc.io.files import atomic_write
from einc.ir.diagnostics import EincError

DATA_ENV = "EINC_DATA"
MIRRORS_ENV = "EINC_DATA_MIRRORS"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "valid", "test")


class DataMissing(EincError):
    """A data set is neither where a command was told nor in the cache; the message says how to fetch it."""


@dataclass(frozen=True)
class Download:
    """One published file: its name, size in bytes and SHA-256."""

    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Dataset:
    """A fetchable data set: where its files come from, and what they become."""

    key: str  # "mnist", "debd/nltcs": the path of the result under a data folder, minus `suffix`
    suffix: str  # ".npz" for one file, "" for a folder of files
    description: str
    urls: tuple[str, ...]  # templates with {file}: the canonical mirrors, tried in order
    files: tuple[Download, ...]
    # (the entry, its downloads by file name, the result's path): decode, check, write
    convert: Callable[[Dataset, dict[str, Path], Path], None]
    read: Callable[[Path], dict[str, np.ndarray]]  # the arrays of a fetched copy, to verify it
    content_sha256: str

    @property
    def relative(self) -> str:
        return self.key + self.suffix

    def file_urls(self, file: str) -> list[str]:
        bases = os.environ.get(MIRRORS_ENV, "").split()
        if bases:
            return [f"{base.rstrip('/')}/{self.key}/{file}" for base in bases]
        return [url.format(file=file) for url in self.urls]


# --------------------------------------------------------------------------------------------
# Content checksums: what the decoded arrays must hash to.


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays in name order, each as ``"NAME DTYPE SHAPE\\n"`` then its C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# MNIST: four gzip-compressed IDX files -> mnist.npz


def read_idx(raw: bytes, source: str) -> np.ndarray:
    """An IDX array of unsigned bytes (type 0x08): big-endian magic, dimensions, then the values."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{source}: not an IDX file of unsigned bytes")
    rank = raw[3]
    header = 4 + 4 * rank
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{source}: IDX header says {shape}, but the file holds {len(raw) - header:,} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


MNIST_PARTS = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def mnist_arrays(downloads: Mapping[str, Path]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, file in MNIST_PARTS.items():
        with gzip.open(downloads[file], "rb") as stream:
            array = read_idx(stream.read(), file)
        arrays[name] = array.reshape(len(array), -1) if name.startswith("x") else array
    return arrays


def read_mnist(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in MNIST_PARTS}


def convert_mnist(dataset: Dataset, downloads: dict[str, Path], result: Path) -> None:
    arrays = mnist_arrays(downloads)
    _check_content(dataset, arrays)
    result.parent.mkdir(parents=True, exist_ok=True)  # the data folder is einc's own (atomic_write makes none)
    atomic_write(result, lambda stream: np.savez_compressed(stream, **arrays))


# --------------------------------------------------------------------------------------------
# DEBD: NAME.{train,valid,test}.data (CSV of 0/1) -> debd/NAME/{split}.csv.gz


def read_binary_csv(raw: bytes, source: str) -> np.ndarray:
    """A DEBD ``.data`` file as a uint8 array (rows, columns): every line the same number of
    comma-separated 0/1 cells. Anything else is a ``DataError`` naming the line."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise DataError(f"{source}: empty")
    width = len(lines[0])
    if width % 2 != 1 or any(len(line) != width for line in lines):
        bad = next(i for i, line in enumerate(lines) if len(line) != width or width % 2 != 1)
        raise DataError(f"{source}:{bad + 1}: expected comma-separated 0/1 cells, as many as on line 1")
    cells = np.frombuffer(b"".join(lines), dtype=np.uint8).reshape(len(lines), width)
    values, commas = cells[:, 0::2], cells[:, 1::2]
    if (commas != ord(",")).any() or ((values != ord("0")) & (values != ord("1"))).any():
        bad = int(np.nonzero((commas != ord(",")).any(1) | ((values != ord("0")) & (values != ord("1"))).any(1))[0][0])
        raise DataError(f"{source}:{bad + 1}: expected comma-separated 0/1 cells")
    return values - ord("0")


def debd_arrays(name: str, downloads: Mapping[str, Path]) -> dict[str, np.ndarray]:
    return {split: read_binary_csv(downloads[f"{name}.{split}.data"].read_bytes(), f"{name}.{split}.data")
            for split in SPLITS}


def read_debd(folder: Path) -> dict[str, np.ndarray]:
    return {split: read_binary_csv(gzip.decompress((folder / f"{split}.csv.gz").read_bytes()), f"{folder}/{split}.csv.gz")
            for split in SPLITS}


def convert_debd(dataset: Dataset, downloads: dict[str, Path], result: Path) -> None:
    name = dataset.key.split("/", 1)[1]
    _check_content(dataset, debd_arrays(name, downloads))
    result.parent.mkdir(parents=True, exist_ok=True)
    # the three files are written into a fresh folder beside the result, which is then renamed:
    # the result appears whole or not at all
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=result.parent))
    try:
        for split in SPLITS:
            with (staging / f"{split}.csv.gz").open("wb") as stream:
                # mtime 0: the same bytes on every machine
                with gzip.GzipFile(filename="", mode="wb", fileobj=stream, compresslevel=6, mtime=0) as packed:
                    packed.write(downloads[f"{name}.{split}.data"].read_bytes())
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(staging, 0o755)
        if result.exists():  # a damaged copy: moved aside, so that the name never holds a partial set
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=result.parent))
            os.replace(result, old / name)
            os.replace(staging, result)
            shutil.rmtree(old)
        else:
            os.replace(staging, result)
        sync_folder(result.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _check_content(dataset: Dataset, arrays: Mapping[str, np.ndarray]) -> None:
    actual = content_sha256(arrays)
    if actual != dataset.content_sha256:
        raise DataError(f"{command_name(dataset.key)}: the downloaded files decode to arrays with sha256 "
                        f"{actual}, expected {dataset.content_sha256}; nothing was written")


# --------------------------------------------------------------------------------------------
# The table


# MNIST (LeCun, Cortes & Burges): the mirror torchvision uses first, TensorFlow's, and the
# original site. Sizes and SHA-256 as published for these four files (the same values appear in
# many independent public projects that fetch them from these mirrors; torchvision lists their
# MD5s). They could not be re-hashed from the files here (no network when the table was made):
# the content check below, against the developers' copy, is the second, independent check.
_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/{file}",
    "https://storage.googleapis.com/cvdf-datasets/mnist/{file}",
    "http://yann.lecun.com/exdb/mnist/{file}",
)
_MNIST_FILES = (
    Download("train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    Download("train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    Download("t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    Download("t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
)
# content_sha256 of ../shared/data/mnist.npz's four arrays
_MNIST_CONTENT = "2960db8bf6472a7beb5c7ed7e0f4da8e8b47aa50ff5e80ced39d908927ad09f7"

# DEBD (github.com/arranger1044/DEBD), pinned to one commit so that the files cannot change under
# their checksums; raw files from GitHub, through GitHub's own redirect, and through jsDelivr.
DEBD_COMMIT = "850908666388f1b1c766a304b37dae14613f1e51"
_DEBD_URLS = (
    "https://raw.githubusercontent.com/arranger1044/DEBD/{commit}/datasets/{name}/{file}",
    "https://github.com/arranger1044/DEBD/raw/{commit}/datasets/{name}/{file}",
    "https://cdn.jsdelivr.net/gh/arranger1044/DEBD@{commit}/datasets/{name}/{file}",
)
# name: ((size, sha256) of train, valid, test .data files, content sha256 of the decoded splits).
# File checksums: the repository at DEBD_COMMIT (for the ten in ../shared/data they equal
# debd_manifest.json's); content: content_sha256 of {train, valid, test} decoded by read_binary_csv.
DEBD_FILES: dict[str, tuple[tuple[tuple[int, str], ...], str]] = {
    "accidents": ((
        (2832276, "a76648cf00772c275b4277b21d858e235e3c6d3c5ef30beeb4958189b6bed21c"),
        (377400, "fd3a80a0f411f157cf3772a057d26980bb166cb89b10cafb818a53f1ec30d46d"),
        (566322, "df3f1b6c035bf3e306a7d7127320e479d2546ce14a5d6d3043e6be0925b8b414"),
    ), "0a62dce24018eab873c71472b75eac79f21b219c5716097f19da08ec4eb0b462"),
    "baudio": ((
        (3000000, "b1ec73f4aa9d4ce48b465ded865cc3d22b3f68cf6258f9e15fbef8902138add1"),
        (400000, "7164d8a4943f74953f0e982002d84693fdf483e17f69e7407dc939c5ce5622fe"),
        (600000, "1474f3206f1f35e099803a0f40b0cd209bdc8d787825095ef6cb23fd87ed0d05"),
    ), "33dedf03e75f4bd0ab129ab62c1225260e325c121c8cea238eb3957beb77d22c"),
    "bbc": ((
        (3533720, "a6f0ba467ebf502ba3b37caa1f20e43ff82664dcd580be92010106cf80fb0db1"),
        (476100, "f6a37bd58cdb6745725628be19dfd3b9b795082faa8ca771b8f27dbf4a5ff46d"),
        (698280, "7116fce92a1f3d610cee673a974c8c9895957ee07ce6f086b431ee296aa7734a"),
    ), "4729c52967c2aac94ef0f646336e65f418c2f2a27a6e9b66bbe493ebce2439b5"),
    "bnetflix": ((
        (3000000, "73c87cf0635ec734cc0726a5c644b904ff33e81ea51f1049db0e77b787ebad7c"),
        (400000, "7f0a3e597c6f305f707f9ecd2b2aa523c576cdb17fdc5d902fc832ebea5163de"),
        (600000, "af73990782fd2f146d96059855c4f3bbb6a7a7caefc417ff620a3ed1415a2395"),
    ), "600156db14ac57a62164e63309fc1b09949f9b924fadcf1f6b67b73086ac32de"),
    "dna": ((
        (576000, "bb8de0ca4b6ad9b610036b7a302962ebecd4b504354b14c02c7d0bee48d207d9"),
        (144000, "4b0fc89cda5eaf5c75926e281afb6af99de194a546070d5b81b524ba251f4f3f"),
        (426960, "fec3ae7b26804020a9c43c99828441c5e08bb76b23719368a74ad2b09af99100"),
    ), "5f559798f96e51110d6821a3e063322b8f0334dfe86ed45983fc2bc622f49070"),
    "jester": ((
        (1800000, "dd93578c3359d5b234bb278bf0901c5215d83b910f7d51d7c91951a0a4c244cd"),
        (200000, "91df833941e189265345898d3f63211560c2456df599f34beee8e95381ee7524"),
        (823200, "346044fb561cf18f284f7e9d5896178b03048991b6ebb6f7482885fccbc16082"),
    ), "f6b9bd4cc836bd9d1ac49abc1001f80c61b8202ab4091770b657fbd591b8cdc7"),
    "moviereview": ((
        (3203200, "195729f0d72e9707abb7a901b57193bd1b1c9108bb261202170eec6c7e5e2ed1"),
        (300300, "d887c7726485ca46026c3c9ab511174679cd1c96443c5410ab24fb81c8be38e3"),
        (500500, "9fea48ab7422d4a1c0b5d063311e6fd3104e59c11018276f7a9e909685a856d2"),
    ), "3f6fe17fb8a5c8924d99fa30d7a4b2ddcaea63178ba10c2f25a60b0f48b62657"),
    "mushrooms": ((
        (448000, "465c712c066bbbee3ccceded24bbe42b4c379df67b524e28cce9bf3a8b83f27b"),
        (112000, "5a067e6854df71623415e6adc8e913cbff766637a324788882ba800907aa5385"),
        (1259776, "313c5f04b5d0a18bee2f2ffa264be265d09f5362aad6f714637acd9552f81aa0"),
    ), "a252779699c2763bc67564707431f20099f1ca15f53413a5cc05f893aaaa8bb8"),
    "nips": ((
        (400000, "4d744cb1f2c725405bff6ef6878df06eafbbc2a91f0510e0f3d8a508b05ec7bb"),
        (100000, "b06acd8e6a701d63d4e58b5076c11c59bcd0343fb9b1fbb5997459d3e6b8ca96"),
        (1240000, "48711bdaffbd43aa439679785e19d9cc80c64a157fa84eadc5dce60ee4edf7bc"),
    ), "d82949143561ef8608573ad8b3d616d8ead031f2ac10fef73e1c80bdcb4b08ce"),
    "nltcs": ((
        (517792, "e547a7aedad1dd2f7177030881ab1b92c7e24ae5464c71a0f1f89daecaf52b30"),
        (69024, "93bbbf5c6febdc9bc6e5b5bfab636f4dc0685ab2896d24b23dd267794c3bfcf6"),
        (103552, "f9ffa6b74b27dc03bee3203d157ee31079e80b13be40d0c0093d635c25aed523"),
    ), "3083262667401814ff0e3ac169d0a27055a7947ff2cd4f24adbeb61b64e0328a"),
    "plants": ((
        (2402856, "1fb1219ff94068d12a563f9e81f8889a1885f41e867884cff608669300c6848f"),
        (320298, "47834ed318b2d74f48e4b083226ef47fd446d41986012ceae19d230574821b34"),
        (480516, "95f53c033cd1d86467aec2610dc5bfe014534206c2da4919f73bcab246ab8755"),
    ), "e463b27146e27ec8f59add47d89d9882417cef66faec54e529c60b8dc818a748"),
    "pumsb_star": ((
        (3997412, "27e610b5f9f507f94ebf8a227f8b96cc59d7eed51e06ee5d2fe8353afbc1524c"),
        (533010, "6a491d1ea64eb0249dddd168fdddeef88aa21001a933eb7309603b6466187af8"),
        (799352, "b2da195314ac17f9d8d171743c5f98a28ea9583332a52d34aa228ff2e11aa8e7"),
    ), "6f9acefae2724569da0f4f5d9326232b6eb729d9f04dd5b1d3c11099715e3f3c"),
    "voting": ((
        (3299652, "113c35bd468a0bb97772623634c1b729b76ba90674e62b68c38fe8d5ac08b341"),
        (543600, "391bad94351ac4565e2f6628c917607b6e82b82ebdc52d64dd8bfbebcdae12b7"),
        (951300, "c77c851edfc1fd5c275e961de3530ae406fc5c3446fa305959720273a5bbe9c8"),
    ), "3c0d7f243400b88730acd9850e448b68b3338c49d5cf4778acc4a05bcbeb97e8"),
}


def _debd(name: str) -> Dataset:
    splits, content = DEBD_FILES[name]
    files = tuple(Download(f"{name}.{split}.data", size, sha) for split, (size, sha) in zip(SPLITS, splits))
    urls = tuple(url.format(commit=DEBD_COMMIT, name=name, file="{file}") for url in _DEBD_URLS)
    return Dataset(f"debd/{name}", "", f"DEBD binary density estimation set {name}: train, valid, test",
                   urls, files, convert_debd, read_debd, content)


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset("mnist", ".npz", "MNIST digits: 70,000 28x28 grey-level images and labels", _MNIST_URLS,
                     _MNIST_FILES, convert_mnist, read_mnist, _MNIST_CONTENT),
    **{f"debd/{name}": _debd(name) for name in DEBD_FILES},
}
# DEBD sets of the repository whose files einc has no checksums for (absent from the snapshot the
# table was made from): refused with that reason rather than fetched unverified
DEBD_UNVERIFIED = ("ad", "adult", "book", "c20ng", "connect4", "cr52", "cwebkb", "kdd", "kosarek", "msnbc",
                   "msweb", "ocr_letters", "rcv1", "tmovie", "tretail")


# --------------------------------------------------------------------------------------------
# Finding and fetching


def data_home() -> Path:
    """The cache: ``$EINC_DATA``, default ``~/.cache/einc/data`` (read at call time)."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "einc" / "data"


def shared_home() -> Path:
    """The developers' copy, ``../shared/data`` beside the project."""
    return PROJECT_ROOT.parent / "shared" / "data"


def command_name(name: str) -> str:
    """``debd/nltcs`` -> ``debd nltcs``: how ``einc data`` spells a data set."""
    return name.replace("/", " ")


def lookup(name: str) -> Dataset:
    """The table entry of ``mnist`` or ``debd/NAME``; a clear error for anything else."""
    if name in DATASETS:
        return DATASETS[name]
    family, _, member = name.partition("/")
    if family == "debd" and member in DEBD_UNVERIFIED:
        raise EincError(f"debd {member}: einc has no verified checksums for this DEBD set, so it does not "
                        f"fetch it; fetchable: {', '.join(sorted(DEBD_FILES))}")
    if family == "debd":
        raise EincError(f"unknown DEBD data set '{member}'; expected one of {', '.join(sorted(DEBD_FILES))}")
    raise EincError(f"unknown data set '{command_name(name)}'; expected mnist or debd NAME")


def present(dataset: Dataset, path: Path) -> bool:
    """Whether ``path`` holds the data set's files (not whether they are right: ``verify``)."""
    if dataset.suffix:
        return path.is_file()
    return all((path / f"{split}.csv.gz").is_file() for split in SPLITS)


def verify(dataset: Dataset, path: Path) -> bool:
    """Whether the data set at ``path`` decodes to exactly the published arrays."""
    try:
        return content_sha256(dataset.read(path)) == dataset.content_sha256
    except (OSError, ValueError, EOFError, KeyError, EincError):
        return False


def find(name: str, given: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
         option: str = "--data") -> Path:
    """Where data set ``name`` is: ``given`` (a command's ``option``), else the cache, else
    ../shared/data; ``folder`` replaces the last two. ``DataMissing`` (one line) when absent."""
    dataset = lookup(name)
    fetch_hint = f"run `einc data fetch {command_name(name)}`"
    if given is not None:
        if not Path(given).exists():
            raise DataMissing(f"{given}: no such file or folder; pass another path, or {fetch_hint} and leave it out")
        return Path(given)
    homes = [Path(folder)] if folder is not None else [data_home(), shared_home()]
    for home in homes:
        candidate = home / dataset.relative
        if present(dataset, candidate):
            return candidate
    where = f"{homes[0]}" if folder is not None else f"{homes[0]} (${DATA_ENV}) or {homes[1]}"
    raise DataMissing(f"{command_name(name)} is not in {where}: {fetch_hint}, or give its path with {option}")


def fetch(name: str, folder: str | os.PathLike | None = None, progress: bool | None = None,
          say: Callable[[str], None] = lambda text: None) -> tuple[Path, bool]:
    """Download, verify and convert data set ``name`` into ``folder`` (default: the cache).
    Returns (its path, whether it was fetched now: False when a verified copy was there)."""
    dataset = lookup(name)
    home = Path(folder).expanduser() if folder is not None else data_home()
    result = home / dataset.relative
    if present(dataset, result):
        if verify(dataset, result):
            return result, False
        say(f"{result}: not the published data (an old or damaged copy); fetching it again")
    staging = home / ".downloads" / dataset.key
    downloads = {}
    try:
        for item in dataset.files:
            say(f"{command_name(name)}: {item.file} ({item.size:,} bytes)")
            downloads[item.file] = download(dataset.file_urls(item.file), staging / item.file, item.size,
                                            item.sha256, label=item.file, progress=progress)
        dataset.convert(dataset, downloads, result)
        # the downloads are in the result now
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        # after a failure too: folders left empty (a partial download, kept to resume, keeps its own)
        prune_empty_folders(staging, home)
    return result, True


def prune_empty_folders(folder: Path, home: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``home`` while they are empty
    (or already gone)."""
    while folder != home and home in folder.parents:
        if folder.exists():
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()
        folder = folder.parent


# --------------------------------------------------------------------------------------------
# `einc data`


def names_of(args_dataset: str | None, members: Sequence[str]) -> list[str]:
    """The table names a command line means: ``mnist``, or ``debd NAME...``."""
    if args_dataset is None:
        raise EincError("which data set? expected mnist or debd NAME (see einc data list)")
    if args_dataset == "debd":
        if not members:
            raise EincError(f"debd needs a name: one of {', '.join(sorted(DEBD_FILES))}")
        return [f"debd/{member}" for member in members]
    if members:
        raise EincError(f"{args_dataset} takes no further names; found {' '.join(members)}")
    return [args_dataset]


def cmd_data(args) -> int:
    """``einc data fetch|path|list``."""
    if args.action == "list":
        if args.dataset is not None:
            raise EincError("einc data list takes no data set name")
        for name, dataset in DATASETS.items():
            try:
                where = str(find(name, folder=args.dir))
            except DataMissing:
                where = "not fetched"
            print(f"{command_name(name):<18} {where}")
        return 0
    names = names_of(args.dataset, args.names)
    if args.action == "path":
        for name in names:
            print(find(name, folder=args.dir))
        return 0
    for name in names:
        path, fetched = fetch(name, args.dir, say=lambda text: print(text, flush=True))
        print(f"{command_name(name)}: {'fetched and verified' if fetched else 'already there, verified'}: {path}")
    return 0
