"""Datasets described by folders or tables, and splits that cannot leak."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from keras_sepseq import FieldSequence, SeparatedSequence
from keras_sepseq.datasets import from_directory, from_table, split_by_key


def write_png(path, value, size=(4, 5)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)
    return str(path)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 300), groups=st.booleans(), salt=st.text(max_size=5))
def test_splits_are_disjoint_cover_the_data_keep_groups_and_do_not_move_when_files_are_added(n, groups, salt):
    keys = [f"img_{i:04d}.png" for i in range(n)]
    group_of = [f"patient{i // 3}" for i in range(n)] if groups else None
    parts = split_by_key(keys, groups=group_of, salt=salt)
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(n))  # disjoint and complete
    if groups:
        for indices in parts.values():
            for other in parts.values():
                if other is not indices:
                    assert not {group_of[i] for i in indices} & {group_of[i] for i in other}
    # 10% more files (and more patients): nobody that was there moves.
    more = keys + [f"img_{i:04d}.png" for i in range(n, n + max(1, n // 10))]
    more_groups = None if not groups else group_of + [f"patient{i // 3}" for i in range(n, len(more))]
    grown = split_by_key(more, groups=more_groups, salt=salt)
    for name, indices in parts.items():
        assert set(indices.tolist()) <= set(grown[name].tolist())


def test_splits_follow_the_fractions_and_stratify_exactly():
    keys = [f"k{i}" for i in range(2000)]
    parts = split_by_key(keys, fractions={"train": 0.7, "test": 0.3})
    assert abs(len(parts["train"]) / 2000 - 0.7) < 0.05
    labels = [0] * 100 + [1] * 20
    parts = split_by_key(keys[:120], fractions={"train": 0.75, "test": 0.25}, stratify=labels)
    for cls, total in ((0, 100), (1, 20)):
        train = sum(labels[i] == cls for i in parts["train"])
        assert train == round(0.75 * total)  # exact per class


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(fractions={"a": 0.5, "b": 0.4}), r"must add up to 1", id="fractions not adding to 1"),
        pytest.param(dict(fractions={"a": -1, "b": 2}), r"fractions >= 0", id="negative fraction"),
        pytest.param(dict(groups=[1, 2]), r"`groups` must hold one value per sample: 2 for 3 keys", id="short groups"),
    ],
)
def test_bad_split_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_by_key(["a", "b", "c"], **kwargs)
    with pytest.raises(ValueError, match=r"the key 'a' more than once"):
        split_by_key(["a", "b", "a"])


def test_from_directory_numbers_classes_by_folder_and_splits_by_path(tmp_path):
    for cls, value in (("cat", 10), ("dog", 20), ("eel", 30)):
        for i in range(30):
            write_png(tmp_path / "pets" / cls / f"{i:02d}.png", value)
    (tmp_path / "pets" / "dog" / "notes.txt").write_text("not an image")
    everything = from_directory(tmp_path / "pets", batch_size=90, shuffle=False, dtype="uint8")
    assert isinstance(everything, SeparatedSequence) and everything.class_names == ["cat", "dog", "eel"]
    x, y = everything[0]
    assert y.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert (x[:, 0, 0, 0] == np.repeat([10, 20, 30], 30)).all()  # each image under its own class
    splits = {
        name: from_directory(tmp_path / "pets", split=name, shuffle=False) for name in ("train", "validation", "test")
    }
    files = {name: set(seq.file_paths) for name, seq in splits.items()}
    assert sum(len(f) for f in files.values()) == 90 and not files["train"] & files["test"]
    only = from_directory(tmp_path / "pets", class_names=["eel", "cat"], batch_size=60, shuffle=False)
    assert only.class_names == ["eel", "cat"] and only[0][1].tolist() == [0] * 30 + [1] * 30
    with pytest.raises(ValueError, match=r"`class_names` lists folders that are not in .*: \['cow'\]"):
        from_directory(tmp_path / "pets", class_names=["cow"])
    with pytest.raises(ValueError, match=r"`split` must be one of \['test', 'train', 'validation'\]"):
        from_directory(tmp_path / "pets", split="dev")


def test_from_table_reads_a_csv_with_path_and_label_columns(tmp_path):
    rows = ["t1,t2,mask,grade"]
    for i in range(6):
        write_png(tmp_path / "scans" / f"p{i}_t1.png", i)
        write_png(tmp_path / "scans" / f"p{i}_t2.png", 100 + i)
        mask = np.full((4, 5), i % 2, np.uint8)
        Image.fromarray(mask).save(tmp_path / "scans" / f"p{i}_mask.png")
        rows.append(f"scans/p{i}_t1.png,scans/p{i}_t2.png,scans/p{i}_mask.png,{i % 3}")
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    seq = from_table(
        tmp_path / "table.csv", ["t1", "t2"], ["mask", "grade"], batch_size=6, shuffle=False, dtype="uint8",
        num_classes=2, workers=2,
    )  # fmt: skip
    assert isinstance(seq, FieldSequence)
    x, y = seq[0]
    assert x["t1"][:, 0, 0, 0].tolist() == list(range(6)) and x["t2"][:, 0, 0, 0].tolist() == list(range(100, 106))
    assert y["mask"].shape == (6, 4, 5) and y["mask"][:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert y["grade"].dtype == np.int64 and y["grade"].tolist() == [0, 1, 2, 0, 1, 2]
    seq.close()
    with pytest.raises(ValueError, match=r"`targets` names a column that is not in the table: 'grad'"):
        from_table(tmp_path / "table.csv", "t1", "grad")


def test_from_table_takes_a_dataframe_like_object(tmp_path):
    class Frame:  # what from_table needs of a pandas DataFrame: columns and column access
        def __init__(self, data):
            self.data = data
            self.columns = list(data)

        def __getitem__(self, name):
            return self.data[name]

    paths = [write_png(tmp_path / f"{i}.png", i) for i in range(4)]
    seq = from_table(
        Frame({"image": paths, "score": [0.5, 1.5, 2.0, 3.25]}), "image", "score", batch_size=4, shuffle=False
    )
    x, y = seq[0]
    assert x.shape == (4, 4, 5, 3) and y.dtype == np.float32 and y.tolist() == [0.5, 1.5, 2.0, 3.25]
    with pytest.raises(ValueError, match=r"column 'image' holds neither paths .* nor numbers"):
        from_table(Frame({"image": ["x.txt"] * 2}), "image")
