"""Datasets -> arrays: one ``Dataset`` whatever the layout on disk.

Layouts read by ``load(path)``:
- a shared ``.npz`` (keys ``train``, ``test``, ``label``, optional ``interpretation``);
- a folder of such ``.npz`` files (SMAP or MSL: every channel file of one spacecraft), concatenated
  in name order as the common benchmark versions do (``load_entities``: each file an entity, as a
  stream deploys them);
- SMD's original text layout: a folder with ``train/``, ``test/``, ``test_label/`` and optional
  ``interpretation_label/``, and ``path`` naming the machine, e.g. ``ServerMachineDataset/machine-1-1``;
- telemanom: a folder with ``train/*.npy``, ``test/*.npy`` and ``labeled_anomalies.csv``;
- a CSV with a header and a label column (``LABEL_COLUMNS``: ``label``, ``is_anomaly``, ``anomaly``,
  ``attack``, ``Normal/Attack``; numbers, or text where ``normal`` is normal), split in time
  (``train_fraction``, default 0.5; the train part's labels are ignored); empty or ``NA`` cells are gaps;
  comma, semicolon or tab separated; notes above the header skipped; time columns and SKAB's
  ``changepoint`` are not channels; labels of only -1 and 1 read -1 as the anomaly (``anomalous``);
- PSM's layout: a folder with ``train.csv``, ``test.csv`` and ``test_label.csv``;
- for ``load_entities``, a folder of any of these files, or an SMD-layout folder of machines (a fleet):
  one entity each.

A dataset can say which of its channels are the plant's inputs (commands, setpoints; ``inputs``):
an ``.npz`` with an ``inputs`` array of column indices, and telemanom's layout (the SMAP/MSL channel
files, a telemanom folder), whose column 0 is the telemetry value and the others encoded commands.
"""
from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


@dataclass
class Dataset:
    name: str
    train: np.ndarray  # [T, C] float32
    test: np.ndarray  # [N, C] float32
    label: np.ndarray  # [N] int8
    channels: list[str]
    interpretation: np.ndarray | None = None  # [K, 3] rows (start, end, channel), half-open, 0-based
    inputs: list[str] = field(default_factory=list)  # channels that are inputs (detectors.base.Detector.judge)
    # Seconds between readings: what the dataset's documentation states or its time column shows; None
    # where neither says (``training.evaluate`` then assumes DEFAULT_INTERVAL). The level guard's window
    # is time on the entity's clock (``scoring.conditioning.Level``), so an evaluation needs it.
    interval: float | None = None


class DataError(ValueError):
    """A dataset path that cannot be read; the message says which and what Vigil reads."""


class LabelsSealed(RuntimeError):
    """Test labels were read before the scores they judge were final."""


class SealedDataset(Dataset):
    """A dataset whose test labels (``label``, ``interpretation``) raise ``LabelsSealed`` until
    ``unseal()``: evaluation seals what it loads, and only ``training.evaluate.report`` unseals, after
    scoring. So no setting, threshold or model can be chosen on them by mistake."""

    _locked = False

    @property
    def label(self) -> np.ndarray:
        self._check()
        return self._label

    @label.setter
    def label(self, value) -> None:
        self._label = value

    @property
    def interpretation(self) -> np.ndarray | None:
        self._check()
        return self._interpretation

    @interpretation.setter
    def interpretation(self, value) -> None:
        self._interpretation = value

    def _check(self) -> None:
        if self._locked:
            raise LabelsSealed(f"the test labels of {self.name} are sealed until its scores are final")

    def unseal(self) -> "SealedDataset":
        self._locked = False
        return self


def seal(data: Dataset) -> SealedDataset:
    """``data`` with its test labels sealed (see ``SealedDataset``)."""
    if isinstance(data, SealedDataset):
        data._locked = True
        return data
    out = SealedDataset(data.name, data.train, data.test, data.label, data.channels, data.interpretation, data.inputs,
                        data.interval)
    out._locked = True
    return out


def _names(c: int) -> list[str]:
    return [f"ch{i}" for i in range(c)]


def telemanom_inputs(channels: list[str]) -> list[str]:
    """telemanom's layout (SMAP, MSL): column 0 is the telemetry value, the others are one-hot encoded
    commands sent to the spacecraft (Hundman et al. 2018; ../shared/data/README.md): inputs."""
    return list(channels[1:])


LABEL_KEYS = ("label", "labels", "test_label")  # an .npz's test labels, under the first of these it has


def _columns(a: np.ndarray) -> np.ndarray:
    """[T, C] float32; a 1-D array is one channel."""
    a = np.asarray(a, np.float32)
    return a[:, None] if a.ndim == 1 else a


# Sampling intervals that a dataset's documentation states, for layouts that carry no time: SMD, one
# point a minute (Su et al., KDD 2019; ../shared/data/README.md), known by its machines' names.
# SMAP and MSL are "anonymized with regard to time" (telemanom's README): no interval is stated.
SMD_INTERVAL = 60.0
SMD_MACHINE = re.compile(r"machine-\d+-\d+")


def documented_interval(name: str) -> float | None:
    """The stated sampling interval of a dataset known by its (file) name; None when none is stated.

    >>> documented_interval("machine-1-6"), documented_interval("A-1")
    (60.0, None)
    """
    return SMD_INTERVAL if SMD_MACHINE.fullmatch(name) else None


def load_npz(path: Path) -> Dataset:
    """Keys ``train``, ``test``, a label (``LABEL_KEYS``), and optionally ``interpretation``, ``inputs``
    (column indices), ``channels`` (names; otherwise ``ch0``, ``ch1``, ...) and ``interval`` (seconds
    between readings; otherwise the documented one, ``documented_interval``)."""
    d = np.load(path)
    train, test = _columns(d["train"]), _columns(d["test"])
    key = next((k for k in LABEL_KEYS if k in d.files), None)
    if key is None:
        raise DataError(f"{path}: no test labels (a key {' or '.join(LABEL_KEYS)}); it has {', '.join(d.files)}")
    label = np.asarray(d[key])
    if len(label) != len(test):
        raise DataError(f"{path}: {len(label)} labels for {len(test)} test points")
    label = anomalous(label.reshape(len(test), -1)).max(1)  # [N, C] labels: any channel
    if train.shape[1] != test.shape[1]:
        raise DataError(f"{path}: train has {train.shape[1]} channels, test {test.shape[1]}")
    names = [str(n) for n in d["channels"]] if "channels" in d.files else _names(train.shape[1])
    if len(names) != train.shape[1]:
        raise DataError(f"{path}: {len(names)} channel names for {train.shape[1]} channels")
    if "inputs" in d.files:
        inputs = [names[int(i)] for i in np.atleast_1d(d["inputs"])]
    else:  # the shared data's smap_msl/{smap,msl}/*.npz: one telemanom channel file each
        inputs = telemanom_inputs(names) if path.parent.parent.name == "smap_msl" else []
    interval = float(d["interval"]) if "interval" in d.files else documented_interval(path.stem)
    return Dataset(path.stem, train, test, label, names,
                   d["interpretation"] if "interpretation" in d.files else None, inputs, interval)


def concatenate(name: str, parts: list[Dataset], where: Path) -> Dataset:
    """Entities of one layout as one dataset, in order (one model for all of them)."""
    if not parts:
        raise FileNotFoundError(f"{where}: no entities")
    widths = {p.train.shape[1] for p in parts}
    if len(widths) != 1:
        raise ValueError(f"{where}: files have different channel counts {sorted(widths)}")
    return Dataset(name, np.concatenate([p.train for p in parts]), np.concatenate([p.test for p in parts]),
                   np.concatenate([p.label for p in parts]), parts[0].channels, inputs=parts[0].inputs,
                   interval=parts[0].interval)


def load_npz_folder(path: Path) -> Dataset:
    return concatenate(path.name, [load_npz(f) for f in sorted(path.glob("*.npz"))], path)


def load_smd_text(root: Path, machine: str) -> Dataset:
    """SMD as published by OmniAnomaly: comma-separated text; interpretation lines 'start-end:d1,d2',
    all 1-based, read as rows [start-1, end-1) as TranAD's preprocessing does."""
    read = lambda sub: np.loadtxt(root / sub / f"{machine}.txt", delimiter=",", dtype=np.float32, ndmin=2)  # noqa: E731
    train, test = read("train"), read("test")
    label = np.loadtxt(root / "test_label" / f"{machine}.txt", delimiter=",", dtype=np.int8, ndmin=1)
    rows = []
    interp = root / "interpretation_label" / f"{machine}.txt"
    if interp.exists():
        for line in interp.read_text().split():
            span, dims = line.split(":")
            start, end = (int(v) for v in span.split("-"))
            rows += [(start - 1, end - 1, int(d) - 1) for d in dims.split(",") if d]
    return Dataset(machine, train, test, label, _names(train.shape[1]),
                   np.array(rows, np.int64).reshape(-1, 3) if rows else None, interval=SMD_INTERVAL)


def telemanom_channels(root: Path, spacecraft: str | None = None) -> list[Dataset]:
    """telemanom: per-channel .npy arrays and labeled_anomalies.csv (inclusive [start, end] sequences);
    one dataset per channel file, named ``FOLDER/CHANNEL``."""
    table = list(csv.DictReader(open(root / "labeled_anomalies.csv")))
    if spacecraft:
        table = [r for r in table if r["spacecraft"].upper() == spacecraft.upper()]
    table.sort(key=lambda r: r["chan_id"])
    out = []
    for row in table:
        test = np.load(root / "test" / f"{row['chan_id']}.npy").astype(np.float32)
        label = np.zeros(len(test), np.int8)
        for start, end in ast.literal_eval(row["anomaly_sequences"]):
            label[start:end + 1] = 1
        train = np.load(root / "train" / f"{row['chan_id']}.npy").astype(np.float32)
        names = _names(train.shape[1])
        out.append(Dataset(f"{root.name}/{row['chan_id']}", train, test, label, names, inputs=telemanom_inputs(names)))
    if not out:
        raise FileNotFoundError(f"{root}: no channels{' for ' + spacecraft if spacecraft else ''}")
    return out


def load_telemanom(root: Path, spacecraft: str | None = None) -> Dataset:
    """Every channel of a telemanom folder (or of one spacecraft) concatenated: one model for all."""
    return concatenate(spacecraft or root.name, telemanom_channels(root, spacecraft), root)


MISSING = {"", "na", "nan", "n/a", "null", "none"}  # CSV cells that are a missing value (NaN, filled later)


def _cell(row: list[str], i: int, line: int, path: Path, missing: bool = True) -> float:
    """One CSV cell as a number; an empty or NA cell is NaN (a gap, filled before fitting and imputed
    when streamed), anything else that is not a number is an error naming the line and column."""
    text = row[i].strip() if i < len(row) else ""
    if missing and text.lower() in MISSING:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: line {line}, column {i + 1}: {text!r} is not a number") from None


LABEL_COLUMNS = ("label", "is_anomaly", "anomaly", "attack", "normal/attack")
NORMAL = {"0", "normal", "false", "no"}  # label text that means a normal point; any other text is anomalous


def _label(row: list[str], i: int, line: int, path: Path) -> float:
    """A label cell: a number, or text such as SWaT's Normal/Attack (1 unless it means normal)."""
    text = row[i].strip() if i < len(row) else ""
    if not text:
        raise DataError(f"{path}: line {line}, column {i + 1}: the label is empty")
    try:
        return float(text)
    except ValueError:
        return float(text.lower() not in NORMAL)


def anomalous(labels: np.ndarray) -> np.ndarray:
    """Labels as 0/1 int8: non-zero is anomalous, except in the outlier convention of scikit-learn
    and WADI (only -1 and 1, -1 the anomaly), which would otherwise mark every point anomalous."""
    labels = np.asarray(labels)
    if labels.size and np.isin(labels, (-1, 1)).all() and (labels == -1).any():
        return (labels == -1).astype(np.int8)
    return (labels != 0).astype(np.int8)


def _label_column(header: list[str]) -> int | None:
    """The label column: one named in ``LABEL_COLUMNS``, else the first whose name says so (WADI's
    ``Attack LABLE (1:No Attack, -1:Attack)``)."""
    names = [h.strip().lower() for h in header]
    exact = next((i for i, h in enumerate(names) if h in LABEL_COLUMNS), None)
    if exact is not None:
        return exact
    return next((i for i, h in enumerate(names) if any(w in h for w in ("label", "attack", "anomal"))), None)


HEADER_SEARCH = 10  # lines read for a header with a label column
CSV_BLOCK = 65536  # rows converted to float32 at a time
NOT_CHANNELS = ("timestamp", "datetime", "date", "time", "ts", "index", "row", "changepoint")


TIME_COLUMNS = ("timestamp", "datetime", "date", "time", "ts")
TIME_FORMATS = ("%d/%m/%Y %I:%M:%S %p", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S")  # SWaT's, and day-first or US


def _seconds(text: str) -> float:
    """A time cell as seconds: a number (unix seconds, or milliseconds above 1e11), ISO 8601, or one of
    ``TIME_FORMATS``; NaN when it is none of these."""
    text = text.strip()
    try:
        v = float(text)
        return v / 1000.0 if v > 1e11 else v
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        pass
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    return float("nan")


UNITS = {"(ms)": 1e-3, "(s)": 1.0, "(sec)": 1.0, "(min)": 60.0, "(h)": 3600.0}  # a time column's unit, in its name


def interval_of(times: list[str], name: str = "") -> float | None:
    """The sampling interval a time column shows: the median step between consecutive readings, None
    when its cells are not times or do not increase. Numbers are seconds unless the column's name gives
    another unit (PSM's ``timestamp_(min)`` counts minutes).

    >>> interval_of(["2020-03-09 10:14:33", "2020-03-09 10:14:34", "2020-03-09 10:14:35"])
    1.0
    >>> interval_of(["0", "1", "2"], "timestamp_(min)"), interval_of(["a", "b"]) is None
    (60.0, True)
    """
    unit = next((f for u, f in UNITS.items() if name.strip().lower().endswith(u)), 1.0)
    t = np.array([_seconds(x) * (unit if x.strip().replace(".", "", 1).isdigit() else 1.0) for x in times],
                 np.float64)
    steps = np.diff(t[np.isfinite(t)])
    if len(steps) < 1 or not (steps > 0).mean() > 0.5:
        return None
    return float(np.median(steps[steps > 0]))


def _not_a_channel(name: str) -> bool:
    """A time or row column (``timestamp``, PSM's ``timestamp_(min)``, SKAB's ``datetime``) or a second
    label (SKAB's ``changepoint``): judging it would score the clock or read the labels."""
    name = name.strip().lower()
    return name in NOT_CHANNELS or name.startswith(("timestamp", "datetime"))


def read_csv(path: Path, need_label: bool = True) -> tuple[list[str], np.ndarray, np.ndarray | None, float | None]:
    """A CSV with a header, comma-, semicolon- or tab-separated (sniffed): its channel names, their values
    [T, C], its label column (``LABEL_COLUMNS``; None when it has none and ``need_label`` is false) and
    the sampling interval its time column shows (``interval_of``; None without one)."""
    with open(path, newline="") as f:
        try:
            dialect = csv.Sniffer().sniff(f.read(1 << 16), delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        f.seek(0)
        reader = csv.reader(f, dialect)
        header, label_col, lines = [], None, 0
        for row in reader:  # notes above the header (WADI has four lines of them) are skipped
            lines += 1
            cells, col = sum(bool(c.strip()) for c in row), _label_column(row)
            if cells and (not need_label or (cells >= 2 and col is not None)):
                header, label_col = row, col
                break
            if lines == HEADER_SEARCH:
                break
        if label_col is None and need_label:
            raise DataError(f"{path}: no label column (one of {', '.join(LABEL_COLUMNS)}) in its first "
                            f"{HEADER_SEARCH} lines")
        keep = [i for i, h in enumerate(header) if i != label_col and not _not_a_channel(h)]
        clock = next((i for i, h in enumerate(header)
                      if h.strip().lower() in TIME_COLUMNS or h.strip().lower().startswith(TIME_COLUMNS[:2])), None)
        blocks, rows, label, times = [], [], [], []  # rows become float32 blocks as they come: WADI is 1.2M x 127
        for n, r in enumerate(reader, lines + 1):
            if r:
                rows.append([_cell(r, i, n, path) for i in keep])
                if clock is not None and len(times) < 1000 and clock < len(r):
                    times.append(r[clock])
                if label_col is not None:
                    label.append(_label(r, label_col, n, path))
                if len(rows) == CSV_BLOCK:
                    blocks.append(np.array(rows, np.float32))
                    rows = []
    blocks.append(np.array(rows, np.float32).reshape(len(rows), len(keep)))
    values = np.concatenate(blocks)
    return ([header[i].strip() for i in keep], values, anomalous(np.array(label)) if label_col is not None else None,
            interval_of(times, header[clock]) if times else None)


def load_csv(path: Path, train_fraction: float = 0.5) -> Dataset:
    """One entity from one labelled CSV, split in time (the train part's labels are not used)."""
    channels, values, label, interval = read_csv(path)
    cut = int(len(values) * train_fraction)
    return Dataset(path.stem, values[:cut], values[cut:], label[cut:], channels, interval=interval)


def is_split_csv(path: Path) -> bool:
    """PSM's layout: a folder with ``train.csv``, ``test.csv`` and ``test_label.csv``."""
    return all((path / f).is_file() for f in ("train.csv", "test.csv", "test_label.csv"))


def load_split_csv(path: Path) -> Dataset:
    """One entity from ``train.csv``, ``test.csv`` and ``test_label.csv`` (PSM's layout, eBay's server
    metrics): the same channels in both splits, the labels in their own file."""
    channels, train, _, interval = read_csv(path / "train.csv", need_label=False)
    test_channels, test, _, _ = read_csv(path / "test.csv", need_label=False)
    if test_channels != channels:
        raise DataError(f"{path}: train.csv and test.csv have different channels")
    _, _, label, _ = read_csv(path / "test_label.csv")
    if len(label) != len(test):
        raise DataError(f"{path}: {len(label)} labels in test_label.csv for {len(test)} rows of test.csv")
    return Dataset(path.name, train, test, label, channels, interval=interval)


LAYOUTS = ("an .npz with train, test and label arrays, a folder of them (SMAP/MSL), a telemanom folder "
           "(labeled_anomalies.csv), SMD text (train/, test/, test_label/: one machine, or a folder of them), "
           "a CSV with a label column, a folder of CSVs, or train.csv, test.csv and test_label.csv (PSM)")


def entity_name(data: Dataset) -> str:
    """The name a stream knows an entity of ``load_entities`` by (``NAME`` of ``FOLDER/NAME``): `vigil
    train` saves its model under it and `vigil replay` sends its readings under it, so that `vigil
    worker --model FOLDER` pairs the two."""
    return data.name.rsplit("/", 1)[-1]


def load_entities(path: str | Path) -> list[Dataset]:
    """The entities ``path`` holds, each as a stream deploys it, named ``FOLDER/NAME``: every file of a
    folder of ``.npz`` (a spacecraft's channel files) or of ``.csv``, every channel of a telemanom
    folder, every machine of an SMD-layout folder (``train/``, ``test/``, ``test_label/``: a server
    fleet). Any other path is one entity (``load``, which concatenates a folder of ``.npz`` instead:
    one model for all of it). Why: concatenated, the channel files of SMAP share one model and one
    threshold, and every model scores near the base rate; deployed, each has its own."""
    p = Path(path)
    if not p.is_dir():
        return [load(p)]
    try:
        if (p / "labeled_anomalies.csv").exists():
            return telemanom_channels(p)
        if is_split_csv(p):
            return [load_split_csv(p)]
        if (p / "train").is_dir() and (p / "test_label").is_dir():
            machines = sorted(f.stem for f in (p / "train").glob("*.txt"))
            out = [load_smd_text(p, m) for m in machines]
        elif any(p.glob("*.npz")):
            out = [load_npz(f) for f in sorted(p.glob("*.npz"))]
        elif any(p.glob("*.csv")):
            out = [load_csv(f) for f in sorted(p.glob("*.csv"))]
        else:
            out = []
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - as load(): one line for the user
        raise DataError(f"{path}: cannot be read as a dataset ({type(exc).__name__}: {exc})") from None
    if not out:
        return [load(p)]
    for d in out:
        d.name = f"{p.name}/{d.name}"
    return out


def load(path: str | Path, **kw) -> Dataset:
    """Any supported layout, by what is on disk; a DataError with a one-line reason otherwise."""
    p = Path(path)
    if not p.exists() and not (p.parent / "train" / f"{p.name}.txt").exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        if p.suffix == ".npz":
            return load_npz(p)
        if p.suffix == ".csv":
            return load_csv(p, **kw)
        if p.is_dir() and (p / "labeled_anomalies.csv").exists():
            return load_telemanom(p, **kw)
        if p.is_dir() and is_split_csv(p):
            return load_split_csv(p)
        if p.is_dir() and any(p.glob("*.npz")):
            return load_npz_folder(p)
        if (p.parent / "train" / f"{p.name}.txt").exists():
            return load_smd_text(p.parent, p.name)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader's failure means the same to the user
        raise DataError(f"{path}: cannot be read as a dataset ({type(exc).__name__}: {exc}); Vigil reads "
                        f"{LAYOUTS}") from exc
    raise DataError(f"{path}: not a dataset layout Vigil reads; it reads {LAYOUTS}")
