"""The model registry: numbering, metadata, promotion, odd entity ids, concurrency and crash leftovers."""
import copy
import json
import threading
from urllib.parse import unquote

import numpy as np
import pytest

from detectors import artefacts
from detectors.pca import PCADetector
from training.registry import Registry, data_hash, format_table, table

CHANNELS = [f"c{i}" for i in range(4)]


@pytest.fixture(scope="module")
def fitted():
    return PCADetector(CHANNELS).fit(np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32))


def register(reg, entity, detector, **kw):
    args = dict(trained_from=None, trained_to=None, data_hash="h", metrics={}, parent=None)
    return reg.register(entity, copy.deepcopy(detector), **{**args, **kw})


def test_versions_are_numbered_and_the_artefact_carries_its_version(tmp_path, fitted):
    reg = Registry(tmp_path)
    v1 = register(reg, "pump-1", fitted)
    det = copy.deepcopy(fitted)
    v2 = reg.register("pump-1", det, trained_from=None, trained_to=None, data_hash="h", metrics={}, parent=1)
    assert (v1.version, v2.version) == (1, 2) and det.model_id == "pca@2" and v2.model_id == "pca@2"
    assert [(v.entity, v.model, v.version, v.status) for v in reg.versions()] == [
        ("pump-1", "pca", 1, "candidate"), ("pump-1", "pca", 2, "candidate")]
    assert v2.path == tmp_path / "pump-1" / "pca" / "v2"
    assert artefacts.is_artefact(v2.path) and (v2.path / "registry.json").is_file()
    loaded = reg.load(reg.get("pump-1", "pca", 2))
    assert loaded.model_id == "pca@2"
    windows = np.random.default_rng(1).normal(size=(3, 16, 4)).astype(np.float32)
    a, b = fitted.score(windows), loaded.score(windows)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
    np.testing.assert_array_equal(a.channel, b.channel)
    assert sorted(p.name for p in v2.path.parent.iterdir()) == ["v1", "v2"]  # no temp left behind
    with pytest.raises(KeyError):
        reg.get("pump-1", "pca", 3)


def test_promote_retires_the_previous_champion(tmp_path, fitted):
    reg = Registry(tmp_path)
    register(reg, "e", fitted)
    register(reg, "e", fitted)
    register(reg, "other", fitted)
    assert reg.champion("e") is None
    assert reg.promote("e", "pca", 1).status == "champion"
    assert reg.champion("e").version == 1
    reg.promote("e", "pca", 2)
    assert [v.status for v in reg.versions("e")] == ["retired", "champion"]
    assert reg.get("e", "pca", 1).reason == "replaced by pca@2"
    assert reg.champion("e").version == 2
    assert reg.champion("other") is None  # champions are per entity


def test_two_champions_after_a_crash_resolve_to_the_newest_and_promote_repairs(tmp_path, fitted):
    reg = Registry(tmp_path)
    for _ in range(3):
        register(reg, "e", fitted)
    hst = artefacts.create("hst", CHANNELS).fit(np.random.default_rng(0).normal(size=(200, 4)), progress=False)
    register(reg, "e", hst)  # hst@1: newer than pca@3 despite the lower number
    reg.set_status("e", "pca", 3, "champion")
    reg.set_status("e", "hst", 1, "champion")  # as if promote(hst@1) crashed before retiring pca@3
    assert reg.champion("e").model_id == "hst@1"  # highest created wins, across model names
    reg.promote("e", "pca", 1)  # a rollback retires every other champion
    assert [(v.model_id, v.status) for v in reg.versions("e")] == [
        ("hst@1", "retired"), ("pca@1", "champion"), ("pca@2", "candidate"), ("pca@3", "retired")]
    assert reg.champion("e").model_id == "pca@1"


@pytest.mark.parametrize("entity", ["plant/line 3", "a b/c%d", ".hidden", "..", "ünïcode"])
def test_entity_ids_unsafe_for_paths_round_trip(tmp_path, fitted, entity):
    reg = Registry(tmp_path)
    v = register(reg, entity, fitted)
    (entity_dir,) = [p for p in tmp_path.iterdir()]
    assert entity_dir.parent == tmp_path and unquote(entity_dir.name) == entity
    assert not entity_dir.name.startswith(".")
    assert [x.entity for x in reg.versions()] == [entity] == [x.entity for x in reg.versions(entity)]
    assert reg.get(entity, "pca", 1).entity == entity and v.path.parent.parent == entity_dir
    reg.promote(entity, "pca", 1)
    assert reg.champion(entity).entity == entity


def test_metadata_persists_as_json(tmp_path, fitted):
    reg = Registry(tmp_path)
    train = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    h = data_hash(train)
    metrics = {"f1": 0.8123456, "precision": np.float32(0.5), "n": 3}
    v = register(reg, "e", fitted, trained_from=1700000000.5, trained_to=1700086400.0, data_hash=h,
                 metrics=metrics, parent=7)
    got = Registry(tmp_path).get("e", "pca", 1)
    assert got == v
    assert (got.trained_from, got.trained_to, got.data_hash, got.parent) == (1700000000.5, 1700086400.0, h, 7)
    assert got.metrics == {"f1": 0.8123456, "precision": 0.5, "n": 3} and got.reason is None
    meta = json.loads((got.path / "registry.json").read_text())
    assert "path" not in meta and meta["entity"] == "e" and meta["version"] == 1
    assert "\n  " in (got.path / "registry.json").read_text()  # indented: meant to be read by people


def test_data_hash_depends_on_bytes_shape_and_dtype():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert len(data_hash(a)) == 32 and data_hash(a) == data_hash(a.copy())
    assert data_hash(a) == data_hash(np.asfortranarray(a))  # layout is not content
    others = [a.reshape(4, 3), a.astype(np.float64), a + 1, a.view(np.int32)]
    assert len({data_hash(a), *map(data_hash, others)}) == 5


def test_concurrent_registrations_get_distinct_versions(tmp_path, fitted):
    reg = Registry(tmp_path)
    detectors = [copy.deepcopy(fitted) for _ in range(8)]
    out, errors, start = [], [], threading.Barrier(8)

    def work(det):
        start.wait()
        try:
            out.append(reg.register("e", det, trained_from=None, trained_to=None, data_hash="h", metrics={},
                                    parent=None))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in detectors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v.version for v in out) == list(range(1, 9))
    assert [v.version for v in reg.versions("e")] == list(range(1, 9))
    assert sorted(d.model_id for d in detectors) == sorted(f"pca@{n}" for n in range(1, 9))
    for v in out:
        assert artefacts.load(v.path).model_id == v.model_id


def test_crash_leftovers_are_ignored(tmp_path, fitted):
    reg = Registry(tmp_path)
    register(reg, "e", fitted)
    register(reg, "e", fitted)
    folder = tmp_path / "e" / "pca"
    half = folder / ".v3.deadbeef"  # staging dir of a register that crashed mid-write
    half.mkdir()
    (half / "model.json").write_text('{"format": 2, "na')
    meta = (folder / "v2" / "registry.json").read_text().replace('"version": 2', '"version": 3')
    (half / "registry.json").write_text(meta)  # crashed just before the final rename
    (folder / "v3").mkdir()  # the number it had reserved
    (tmp_path / "e" / "pca" / "v2" / ".registry.json.x.tmp").write_text("{")  # a crashed set_status
    assert [v.version for v in reg.versions()] == [1, 2] == [v.version for v in reg.versions("e")]
    with pytest.raises(KeyError):
        reg.get("e", "pca", 3)
    v = register(reg, "e", fitted)
    assert v.version > 2 and [x.version for x in reg.versions("e")] == [1, 2, v.version]


def test_failed_status_and_reason_persist(tmp_path, fitted):
    reg = Registry(tmp_path)
    register(reg, "e", fitted)
    reg.set_status("e", "pca", 1, "failed", reason="NaN in training loss")
    got = Registry(tmp_path).get("e", "pca", 1)
    assert (got.status, got.reason) == ("failed", "NaN in training loss")
    with pytest.raises(ValueError, match="unknown status"):
        reg.set_status("e", "pca", 1, "great")
    with pytest.raises(ValueError, match="unknown status"):
        register(reg, "e", fitted, status="great")
    assert [p.name for p in got.path.iterdir() if p.name.startswith(".")] == []


def test_table_and_format_table(tmp_path, fitted):
    reg = Registry(tmp_path)
    register(reg, "plant/line 3", fitted, metrics={"f1": 0.812345, "auc": 0.5})
    register(reg, "b", fitted)
    reg.promote("b", "pca", 1)
    rows = table(reg.versions())
    assert [(r["entity"], r["version"], r["status"]) for r in rows] == [("b", 1, "champion"),
                                                                       ("plant/line 3", 1, "candidate")]
    assert rows[1]["created"].endswith("Z") and rows[1]["created"][:2] == "20"
    assert json.loads(json.dumps(rows)) == rows  # what `vigil models --json` prints
    text = format_table(rows).splitlines()
    assert text[0].split() == ["entity", "model", "version", "status", "created", "why", "metrics"]
    assert len(text) == 3 and "champion" in text[1]
    assert "plant/line 3" in text[2] and "f1=0.812 auc=0.5" in text[2] and rows[1]["created"] in text[2]
    assert text[1].index("pca") == text[2].index("pca")  # aligned columns
    # auto's record says why this model (training.selection), in the table and in --json
    register(reg, "c", fitted, metrics={"selection": {"chosen": "pca", "why": "pca: the family the channels call for",
                                                      "candidates": {"pca": {"detection": 0.4}}}})
    row = table(reg.versions("c"))[0]
    assert row["why"] == "pca: the family the channels call for"
    assert "pca: the family the channels call for" in format_table([row]).splitlines()[1]
