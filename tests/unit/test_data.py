"""Dataset loaders: the shared files, and tiny fixtures of every other layout."""
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, load, load_entities

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "smd").exists(), reason="needs ../shared/data")
def test_shared_smd_and_spacecraft_folders():
    smd = load(SHARED / "smd" / "machine-1-6.npz")
    assert smd.train.shape[1] == smd.test.shape[1] == 38 and len(smd.label) == len(smd.test)
    assert smd.interpretation.shape[1] == 3 and len(smd.channels) == 38
    smap = load(SHARED / "smap_msl" / "smap")
    files = sorted((SHARED / "smap_msl" / "smap").glob("*.npz"))
    assert len(smap.test) == sum(len(np.load(f)["test"]) for f in files) and smap.train.shape[1] == 25


def test_smd_text_layout(tmp_path):
    for sub, text in (("train", "1,2\n3,4\n5,6\n"), ("test", "1,2\n9,9\n1,2\n"), ("test_label", "0\n1\n0\n"),
                      ("interpretation_label", "1-2:2\n")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "machine-9-9.txt").write_text(text)
    d = load(tmp_path / "machine-9-9")
    assert d.train.shape == (3, 2) and d.label.tolist() == [0, 1, 0]
    assert d.interpretation.tolist() == [[0, 1, 1]]  # 1-based text becomes 0-based, half-open rows
    for sub in ("train", "test", "test_label"):  # a second machine: the folder is a fleet
        (tmp_path / sub / "machine-1-1.txt").write_text((tmp_path / sub / "machine-9-9.txt").read_text())
    fleet = load_entities(tmp_path)
    assert [m.name for m in fleet] == [f"{tmp_path.name}/machine-1-1", f"{tmp_path.name}/machine-9-9"]
    assert fleet[1].interpretation.tolist() == [[0, 1, 1]] and fleet[0].interpretation is None


def test_telemanom_layout(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for chan in ("A-1", "B-1"):
        np.save(tmp_path / "train" / f"{chan}.npy", np.ones((4, 3)))
        np.save(tmp_path / "test" / f"{chan}.npy", np.zeros((5, 3)))
    (tmp_path / "labeled_anomalies.csv").write_text(
        'chan_id,spacecraft,anomaly_sequences,class,num_values\n'
        'A-1,SMAP,"[[1, 2]]",[point],5\nB-1,MSL,"[[4, 4]]",[point],5\n')
    d = load(tmp_path)
    assert d.label.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 1]  # inclusive ends, channels in name order
    assert load(tmp_path, spacecraft="msl").label.tolist() == [0, 0, 0, 0, 1]
    per_channel = load_entities(tmp_path)  # as a stream deploys them: each channel its own entity
    assert [e.name for e in per_channel] == [f"{tmp_path.name}/A-1", f"{tmp_path.name}/B-1"]
    assert per_channel[1].label.tolist() == [0, 0, 0, 0, 1] and per_channel[0].inputs == ["ch1", "ch2"]


def test_a_folder_of_channel_files_is_one_entity_per_file_and_anything_else_one_entity(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "craft"
    folder.mkdir()
    for name, n in (("B-2", 30), ("A-1", 20)):
        np.savez(folder / f"{name}.npz", train=rng.normal(size=(50, 3)), test=rng.normal(size=(n, 3)),
                 label=np.zeros(n, np.int8))
    entities = load_entities(folder)
    assert [(e.name, len(e.test)) for e in entities] == [("craft/A-1", 20), ("craft/B-2", 30)]
    assert len(load(folder).test) == 50, "load concatenates: one model for the whole folder"
    assert [e.name for e in load_entities(folder / "A-1.npz")] == ["A-1"]
    plants = tmp_path / "plants"
    plants.mkdir()
    for name in ("north", "south"):
        (plants / f"{name}.csv").write_text("ts,a,b,label\n" + "".join(f"{i},{i},{-i},0\n" for i in range(10)))
    assert [(e.name, e.train.shape) for e in load_entities(plants)] == [("plants/north", (5, 2)), ("plants/south", (5, 2))]
    with pytest.raises(DataError, match="no such file"):
        load_entities(tmp_path / "nothing")


def test_csv_with_label_column(tmp_path):
    f = tmp_path / "plant.csv"
    f.write_text("timestamp,a,b,label\n" + "".join(f"{i},{i},{2 * i},{int(i == 7)}\n" for i in range(10)))
    d = load(f)
    assert d.channels == ["a", "b"] and d.train.shape == (5, 2) and d.label.tolist() == [0, 0, 1, 0, 0]


def test_csv_gaps_are_missing_values_and_text_is_an_error_that_says_where(tmp_path):
    f = tmp_path / "plant.csv"
    f.write_text("timestamp,a,b,label\n1,1.0,2.0,0\n2,,2.1,0\n3,1.2,NA,0\n4,1.1,2.2,1\n")
    d = load(f)
    assert np.isnan(d.train[1, 0]) and np.isnan(d.test[0, 1]) and d.label.tolist() == [0, 1]
    f.write_text(" Timestamp,a,b,Normal/Attack\n1,1,2,Normal\n2,1,2,Normal\n3,1,2,Attack\n4,1,2,A ttack\n")
    assert load(f).label.tolist() == [1, 1]  # SWaT's text labels (and its typo)
    f.write_text("timestamp,a,b,label\n1,1.0,open,0\n")
    with pytest.raises(DataError, match="line 2, column 3: 'open' is not a number"):
        load(f)


def test_csv_other_delimiters_clock_columns_and_a_second_label_are_not_channels(tmp_path):
    f = tmp_path / "skab.csv"  # SKAB: semicolons, a datetime column, and a changepoint label beside anomaly
    f.write_text("datetime;Current;Pressure;anomaly;changepoint\n"
                 + "".join(f"2020-03-09 10:14:{i:02d};{i}.5;{-i};{int(i > 7)};{int(i == 8)}\n" for i in range(10)))
    d = load(f)
    assert d.channels == ["Current", "Pressure"] and d.test[:, 0].tolist() == [5.5, 6.5, 7.5, 8.5, 9.5]
    assert d.label.tolist() == [0, 0, 0, 1, 1]
    f = tmp_path / "psm.csv"  # PSM's clock column, tab-separated
    f.write_text("timestamp_(min)\tfeature_0\tlabel\n" + "".join(f"{i}\t{i * 0.1}\t0\n" for i in range(6)))
    assert load(f).channels == ["feature_0"]


def test_csv_notes_above_the_header_and_the_outlier_label_convention(tmp_path):
    f = tmp_path / "wadi.csv"  # WADI: notes first, a label column named by its meaning, -1 the attack
    f.write_text("Water distribution testbed\nexported 2019\n\n"
                 "Row,Date,Time,1_AIT_001_PV,1_FIT_001_PV,\"Attack LABLE (1:No Attack, -1:Attack)\"\n"
                 + "".join(f"{i},10/9/2017,6:00:{i:02d} PM,{i}.0,{2 * i}.0,{-1 if i in (7, 8) else 1}\n"
                           for i in range(10)))
    d = load(f)
    assert d.channels == ["1_AIT_001_PV", "1_FIT_001_PV"] and d.label.tolist() == [0, 0, 1, 1, 0]
    f.write_text("a,label\n1,0\n2,1\n3,0\n4,2\n")  # 0/1 (or any non-zero) stays as it was
    assert load(f).label.tolist() == [0, 1]
    f.write_text("a,label\n1,0\nx,0\n")
    with pytest.raises(DataError, match="line 3, column 1"):  # line numbers count from the file's top
        load(f)


def test_psm_layout_train_test_and_labels_in_three_csvs(tmp_path):
    (tmp_path / "train.csv").write_text("timestamp_(min),feature_0,feature_1\n0,1.0,\n1,2.0,3.0\n2,1.5,2.5\n")
    (tmp_path / "test.csv").write_text("timestamp_(min),feature_0,feature_1\n3,1.0,2.0\n4,9.0,9.0\n")
    (tmp_path / "test_label.csv").write_text("timestamp_(min),label\n3,0\n4,1\n")
    for d in (load(tmp_path), *load_entities(tmp_path)):
        assert d.channels == ["feature_0", "feature_1"] and d.train.shape == (3, 2) and np.isnan(d.train[0, 1])
        assert d.test.tolist() == [[1.0, 2.0], [9.0, 9.0]] and d.label.tolist() == [0, 1]
    (tmp_path / "test_label.csv").write_text("timestamp_(min),label\n3,0\n")
    with pytest.raises(DataError, match="1 labels in test_label.csv for 2 rows"):
        load(tmp_path)


def test_npz_variants_one_channel_names_and_what_is_wrong(tmp_path):
    f = tmp_path / "pump.npz"
    np.savez(f, train=np.arange(8.0), test=np.arange(4.0), labels=np.array([0, 0, 1, 1]),
             channels=np.array(["flow"]))
    d = load(f)
    assert d.train.shape == (8, 1) and d.channels == ["flow"] and d.label.tolist() == [0, 0, 1, 1]
    np.savez(f, train=np.zeros((8, 2)), test=np.zeros((4, 2)), label=np.zeros(3))
    with pytest.raises(DataError, match="3 labels for 4 test points"):
        load(f)
    np.savez(f, train=np.zeros((8, 2)), test=np.zeros((4, 2)))
    with pytest.raises(DataError, match="no test labels"):
        load(f)
    np.savez(f, train=np.zeros((8, 2)), test=np.zeros((4, 3)), label=np.zeros(4))
    with pytest.raises(DataError, match="train has 2 channels, test 3"):
        load(f)


def test_replay_sends_each_entity_under_the_name_its_model_is_trained_under(tmp_path):
    from producers.publish import dataset_series

    craft = tmp_path / "craft"
    craft.mkdir()
    for name in ("A-1", "B-2"):
        np.savez(craft / f"{name}.npz", train=np.zeros((6, 2)), test=np.array([[1, np.nan], [2, 3.0]]),
                 label=np.zeros(2), channels=np.array(["flow", "temp"]))
    series = dataset_series(str(craft), start=100.0)
    # no interval stated: one minute apart, as `vigil eval` times them (training.evaluate.DEFAULT_INTERVAL)
    assert [(s.entity, s.channels, s.ts.tolist()) for s in series] == [
        ("A-1", ["flow", "temp"], [100.0, 160.0]), ("B-2", ["flow", "temp"], [100.0, 160.0])]
    assert np.isnan(series[0].values[0, 1])  # a gap: sent as null, imputed by the worker
    one = dataset_series(str(craft / "A-1.npz"), entity="pump", split="train")
    assert len(one) == 1 and one[0].entity == "pump" and one[0].values.shape == (6, 2)
    np.savez(craft / "A-1.npz", train=np.zeros((6, 2)), test=np.ones((3, 2)), label=np.zeros(3), interval=0.5)
    assert dataset_series(str(craft / "A-1.npz"), start=10.0)[0].ts.tolist() == [10.0, 10.5, 11.0]


def test_a_dataset_knows_its_sampling_interval(tmp_path):
    # the level guard's window is time on the entity's clock, so an evaluation must know the clock: SMD's
    # documented minute, a CSV's time column (SKAB's datetime, PSM's minutes), else nothing stated
    np.savez(tmp_path / "machine-1-1.npz", train=np.zeros((6, 2)), test=np.ones((3, 2)), label=np.zeros(3))
    np.savez(tmp_path / "A-1.npz", train=np.zeros((6, 2)), test=np.ones((3, 2)), label=np.zeros(3))
    assert load(tmp_path / "machine-1-1.npz").interval == 60.0
    assert load(tmp_path / "A-1.npz").interval is None
    rows = "\n".join(f"2020-03-09 10:14:{s:02d};{s * 0.1};{int(s > 5)};0" for s in range(10))
    (tmp_path / "skab.csv").write_text("datetime;Pressure;anomaly;changepoint\n" + rows + "\n")
    skab = load(tmp_path / "skab.csv")
    assert skab.interval == 1.0 and skab.channels == ["Pressure"]
    (tmp_path / "psm.csv").write_text("timestamp_(min),a,label\n" + "\n".join(f"{t},{t},0" for t in range(8)) + "\n")
    assert load(tmp_path / "psm.csv").interval == 60.0


def test_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a dataset layout"):
        load(tmp_path / "notes.txt")
