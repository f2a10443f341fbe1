import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_sepseq.cli import main
from keras_sepseq.demo import CLASS_NAMES, draw_shape, make_demo_dataset


def test_demo_trains_far_above_chance_and_reports(tmp_path, capsys):
    folder = tmp_path / "demo data"
    code = main(["demo", "--dir", str(folder), "--samples", "600", "--epochs", "4", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"dataset: 600 PNG + .npy pairs in {folder}" in out
    assert out.count("images/s") == 4
    accuracy = float(out.split("held-out accuracy: ")[1].split()[0])
    assert accuracy > 0.6  # chance is 0.25
    assert len(list(folder.glob("image_*.png"))) == len(list(folder.glob("label_*.npy"))) == 600


def test_demo_with_process_workers(tmp_path, capsys):
    code = main(["demo", "--dir", str(tmp_path), "--samples", "600", "--epochs", "4", "--use-multiprocessing"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(2 workers, processes)" in out


def test_dataset_is_written_once_and_reused(tmp_path):
    images, labels = make_demo_dataset(str(tmp_path), samples=16)
    stamp = os.path.getmtime(images[0])
    os.utime(images[0], (stamp - 100, stamp - 100))
    again = make_demo_dataset(str(tmp_path), samples=16)
    assert again == (images, labels)
    assert os.path.getmtime(images[0]) == stamp - 100  # not rewritten
    assert json.loads((tmp_path / "dataset.json").read_text())["samples"] == 16
    make_demo_dataset(str(tmp_path), samples=20)  # other settings: rewritten
    assert os.path.getmtime(images[0]) != stamp - 100


def test_demo_labels_are_balanced_and_images_differ(tmp_path):
    images, labels = make_demo_dataset(str(tmp_path), samples=40)
    classes = [int(np.load(p)) for p in labels]
    assert sorted(np.bincount(classes).tolist()) == [10, 10, 10, 10]
    first = np.asarray(Image.open(images[0]))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)), ids=CLASS_NAMES)
def test_each_shape_is_bright_on_a_dark_background(label):
    image = draw_shape(label, np.random.default_rng(label))
    bright = (image.min(axis=2) >= 150).sum()
    assert 20 < bright < 32 * 32 * 0.8


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param([], "the following arguments are required: COMMAND", id="no command"),
        pytest.param(["demo", "--samples", "0"], "expected an integer >= 1, got 0", id="zero samples"),
        pytest.param(["demo", "--epochs", "x"], "expected an integer, got 'x'", id="epochs not a number"),
        pytest.param(["demo", "--samples", "4"], "--samples must be at least 8", id="too few samples"),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown command"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["demo", "--help"]) == 0
    assert "--use-multiprocessing" in capsys.readouterr().out


def test_console_script_is_installed():
    script = shutil.which("keras-sepseq")
    if script is None:
        pytest.skip("keras-sepseq is not on PATH: install the package with pip install -e .")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout


def test_module_runs_as_a_program():
    done = subprocess.run([sys.executable, "-m", "keras_sepseq", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout


def test_bench_small_quick_smoke_run(tmp_path, capsys):
    from keras_sepseq import bench_small

    report_path = tmp_path / "small.json"
    code = main(["bench", "--small", "--quick", "--synthetic", str(tmp_path / "data"), "--json", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["samples"] == 600 and report["workers"] == 2
    settings = {"workers=1", "2 threads", "2 processes", "workers=1 again"}
    assert set(report["loaders"]["small PNGs"]) == settings | {"tf.data"}
    assert set(report["loaders"]["short sequences"]) == set(report["loaders"]["photos"]) == settings
    assert set(report["engine"]) == {"workers=1", "2 threads", "2 processes"}
    for rates in report["loaders"].values():
        assert all(len(per_round) == 1 and min(per_round) > 0 for per_round in rates.values())  # --quick: 1 round
    for cost in report["engine"].values():
        assert 0 < cost["caller_us"] <= cost["total_us"] + 1e-9
    assert report["gil"]["photos"]["decode_rate"] > 0
    assert 0 <= report["gil"]["small PNGs"]["gil_s"] <= report["gil"]["small PNGs"]["alone_s"] + 1e-12
    assert "engine's own cost" in out and "on 16 cores" in out and "x tf.data" in out and "median of 1" in out
    assert "the same code measured twice: per-round ratios" in out
    decisions = report["tuning"]["small PNGs"]
    assert decisions["workers=1"] == [[None] * bench_small.EPOCHS]  # no pool: the calling thread loads
    for setting in ("2 threads", "2 processes"):
        (epochs,) = decisions[setting]
        assert len(epochs) == bench_small.EPOCHS and all(e["limit"] in (0, 1, 2) for e in epochs)
    assert len(list((tmp_path / "data" / "small").glob("img_*.png"))) == 600


def test_bench_quick_smoke_run(tmp_path, capsys):
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "bench",
            "--quick",
            "--repeats",
            "2",
            "--synthetic",
            str(tmp_path / "data"),
            "--json",
            str(report_path),
            "--plot",
            str(plot_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == [
        "tf.data pipeline", "Python generator", "plain PyDataset, 2 threads", "SeparatedSequence, 2 threads",
        "SeparatedSequence, 2 processes", "SeparatedSequence, cache='memory'", "SeparatedSequence, cache=<dir>",
        "numpy arrays in RAM", "tf.data pipeline, augmented", "SeparatedSequence, cache='memory', augmented",
    ]  # fmt: skip
    for result in report["results"]:
        assert result["cold"] > 0 and result["steady"] > 0
        assert [len(rates) for rates in result["epochs"]] == [2, 2]  # two rounds of two epochs
        assert result["cold"] == pytest.approx(sum(rates[0] for rates in result["epochs"]) / 2)  # the median of two
        assert report["ratios"][result["name"]]["cold_vs_pipeline"] > 0
    assert report["ratios"]["tf.data pipeline"]["cold_vs_pipeline"] == 1.0
    augmented = report["ratios"]["SeparatedSequence, cache='memory', augmented"]
    assert augmented["steady_vs_augmented_pipeline"] > 0 and augmented["steady_vs_unaugmented_cache"] > 0
    assert "augmented cache steady vs augmented pipeline" in out
    assert report["ratios"]["numpy arrays in RAM"]["steady_vs_numpy"] == 1.0
    for result in report["results"]:
        assert result["best"] == max(max(rates[1:]) for rates in result["epochs"])
    assert report["decode_limit"]["images_per_second"] > 0
    assert "cold vs" in out and "decode limit" in out and "round 2 of 2" in out
    assert report["settings"]["repeats"] == 2
    loaders = report["loaders"]
    assert {"SeparatedSequence, 2 threads", "SeparatedSequence, 2 processes"} <= set(loaders)
    assert all(len(rates) == 3 and min(rates) > 0 for rates in loaders.values())  # Grain too, where installed
    assert "loader only (no model)" in out
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_on_a_folder_without_images_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--dir", str(tmp_path)]) == 2
    assert "`--dir` holds no image files" in capsys.readouterr().err


def test_inspect_a_clean_dataset_exits_0(indexed_dataset, tmp_path, capsys):
    indexed_dataset(12)
    code = main(["inspect", str(tmp_path / "data" / "image_*.png"), str(tmp_path / "data" / "label_*.npy")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pairs: 12" in out and "image sizes (width x height): 5x6: 12" in out
    assert "classes: 0: 1, 1: 1" in out and out.rstrip().endswith("ok: every file paired and loaded")


def test_inspect_reports_orphans_duplicates_and_broken_files(indexed_dataset, tmp_path, capsys):
    images, labels = indexed_dataset(10)
    os.remove(labels[4])
    open(images[7], "wb").close()
    (tmp_path / "data" / "image_0009b.png").write_bytes(open(images[9], "rb").read())  # a second file with key 9
    code = main(["inspect", str(tmp_path / "data" / "image_*.png"), str(tmp_path / "data" / "label_*.npy"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["pairs"] == 8 and not report["ok"]
    assert [os.path.basename(p) for p in report["orphan_images"]] == ["image_0004.png"]
    assert sorted(os.path.basename(p) for p in report["duplicate_keys"]["images"]["9"]) == [
        "image_0009.png",
        "image_0009b.png",
    ]
    assert [os.path.basename(b["path"]) for b in report["bad"]] == ["image_0007.png"]
    assert "the file is empty" in report["bad"][0]["reason"]


def test_preview_writes_a_contact_sheet(indexed_dataset, tmp_path, capsys):
    indexed_dataset(10)
    out_path = tmp_path / "grid.png"
    args = [
        "preview",
        str(tmp_path / "data" / "image_*.png"),
        str(tmp_path / "data" / "label_*.npy"),
        "--out",
        str(out_path),
    ]
    assert main(args + ["--n", "4", "--size", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    sheet = Image.open(out_path)
    assert sheet.size == (2 * (64 + 6) + 6, 2 * (64 + 32 + 6) + 6)
    first = out_path.read_bytes()
    assert main(args + ["--n", "4", "--size", "64"]) == 0 and out_path.read_bytes() == first  # same seed, same sheet


def test_preview_marks_unreadable_images_and_exits_1(indexed_dataset, tmp_path, capsys):
    images, _ = indexed_dataset(3)
    open(images[1], "wb").close()
    args = [
        "preview",
        str(tmp_path / "data" / "image_*.png"),
        str(tmp_path / "data" / "label_*.npy"),
        "--out",
        str(tmp_path / "g.png"),
    ]
    assert main(args) == 1
    assert "unreadable:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "preview"])
def test_inspect_and_preview_usage_errors_exit_2(tmp_path, command, capsys):
    args = [command, str(tmp_path / "none_*.png"), str(tmp_path / "none_*.npy")] + (
        ["--out", "x.png"] if command == "preview" else []
    )
    assert main(args) == 2
    assert "matched no files" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "bench", "inspect", "preview"])
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage: keras-sepseq " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    "label, text",
    [
        (np.array(7), "7"),
        (np.array(0.123456), "0.1235"),
        (np.array([0, 1, 0]), "class 1"),
        (np.arange(40.0), "[ 0.  1.  2. ... 37. 38. 39.]"[:21] + "…"),
    ],
    ids=["int", "float", "one-hot", "long vector"],
)
def test_label_text(label, text):
    from keras_sepseq.inspection import label_text

    assert label_text(label) == text


def test_inspect_and_preview_show_masks(tmp_path, capsys):
    from PIL import Image

    from keras_sepseq.demo import make_segmentation_dataset

    make_segmentation_dataset(str(tmp_path / "shapes"), samples=6, size=24, seed=1)
    pattern = [str(tmp_path / "shapes" / "image_*.png"), str(tmp_path / "shapes" / "mask_*.png")]
    assert main(["inspect", *pattern, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pixels = report["class_pixels"]
    assert sum(pixels.values()) == 6 * 24 * 24 and set(pixels) <= {"0", "1", "2", "3", "255"} and "0" in pixels
    assert main(["inspect", *pattern]) == 0
    assert "mask pixels per class: 0:" in capsys.readouterr().out
    out = tmp_path / "sheet.png"
    assert main(["preview", *pattern, "--out", str(out), "--n", "4", "--size", "48"]) == 0
    assert Image.open(out).size[0] > 48


def test_the_contact_sheet_draws_each_mask_over_its_image(tmp_path):
    from PIL import Image

    from keras_sepseq.inspection import contact_sheet, mask_colours

    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "image_1.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 2
    Image.fromarray(mask).save(tmp_path / "mask_1.png")
    sheet, problems = contact_sheet([str(tmp_path / "image_1.png")], [str(tmp_path / "mask_1.png")], n=1, cell=16)
    assert problems == []
    cell = np.asarray(sheet)[6:22, 6:22].astype(float)  # the one cell, after the 6 px margin
    expected_right = 128 * 0.55 + mask_colours(np.array([2]))[0] * 0.45
    np.testing.assert_allclose(cell[:, 12], np.tile(expected_right, (16, 1)), atol=1.5)
    np.testing.assert_allclose(cell[:, 2], np.full((16, 3), 128 * 0.55), atol=1.5)  # class 0 is drawn black


@pytest.mark.parametrize(
    "gil, expected",
    [
        ({"gil_s": 100e-6, "alone_s": 500e-6, "speedup": 1.67, "decode_rate": 2000.0},
         ["serial (GIL)  100.0 us of  500.0 us per sample: threads reach at most 10,000/s; on 16 cores 10,000/s",
          "16 x single-core decode = 32,000/s; GIL ceiling / that = 0.3: threads cannot: use use_multiprocessing=True"]),
        ({"gil_s": 0.0, "alone_s": 500e-6, "speedup": 2.2, "decode_rate": 2000.0},
         ["no serial part measurable (two threads at least twice one), no ceiling seen; on 16 cores 32,000/s, on 64 128,000/s",
          "GIL ceiling / that = unbounded: threads keep up"]),
    ],
    ids=["gil_bound", "no_serial_part"],
)  # fmt: skip
def test_bench_small_report_states_the_gil_ceiling_or_that_none_was_seen(gil, expected):
    from keras_sepseq.bench_small import format_small

    report = {
        "samples": 600,
        "workers": 2,
        "loaders": {"photos": {"workers=1": [1000.0], "2 threads": [1900.0]}},
        "engine": {"workers=1": {"caller_us": 2.4, "total_us": 2.4, "wall_us": 2.5}},
        "gil": {"photos": gil},
    }
    text = format_small(report)
    for line in expected:
        assert line in text
    assert "1,000,000,000" not in text and "inf" not in text


def test_bench_small_ratios_are_the_median_of_each_rounds_own_ratio():
    from keras_sepseq.bench_small import format_small

    report = {
        "samples": 600,
        "workers": 2,
        # Round by round 1.05x, 0.95x and 0.625x; the ratio of the medians (105 / 160) would say 0.66x.
        "loaders": {"small PNGs": {"workers=1": [100.0, 200.0, 160.0], "2 threads": [105.0, 190.0, 100.0]}},
        "engine": {},
        "gil": {},
    }
    line = next(line for line in format_small(report).splitlines() if "2 threads" in line)
    assert " 0.95x workers=1" in line and "(rounds 100-190)" in line and "      105 samples/s" in line


def test_bench_small_report_shows_the_spread_of_the_same_code_and_where_threads_loaded():
    from keras_sepseq.bench_small import AGAIN, EPOCHS, format_small

    settled = [{"limit": 0, "capacity": {}}] * EPOCHS
    report = {
        "samples": 600,
        "workers": 2,
        "loaders": {
            "small PNGs": {"workers=1": [100.0, 200.0], "2 threads": [98.0, 204.0], AGAIN: [96.0, 210.0]},
            "photos": {"workers=1": [10.0, 10.0], "2 threads": [18.0, 19.0], AGAIN: [10.0, 10.0]},
        },
        "engine": {},
        "gil": {},
        "tuning": {
            "small PNGs": {"2 threads": [settled, [{"limit": 1, "capacity": {}}] * EPOCHS]},
            "photos": {"2 threads": [[{"limit": 2, "capacity": {}}] * EPOCHS] * 2},
        },
    }
    lines = format_small(report).splitlines()
    assert "per-round ratios 0.96-1.05x (this machine's noise" in lines[4]
    assert lines[5].endswith("2 threads: the calling thread loaded (the workers=1 code) in 5 of 10 measured epochs")
    assert "per-round ratios 1.00-1.00x" in lines[9] and "engine" in lines[10]  # photos' threads never inline


def test_bench_small_says_what_processes_cost_and_reach_from_the_epochs_their_pool_loaded():
    from keras_sepseq.bench_small import EPOCHS, format_small, process_costs

    pool, calling = [{"limit": 2, "capacity": {}}] * EPOCHS, [{"limit": 0, "capacity": {}}] * EPOCHS
    report = {
        "samples": 600,
        "workers": 2,
        "loaders": {
            "small PNGs": {"workers=1": [100.0, 100.0], "2 processes": [150.0, 100.0]},
            "photos": {"workers=1": [10.0], "2 processes": [18.0]},
        },
        "engine": {},
        "gil": {"photos": {"gil_s": 0.0, "alone_s": 600e-6, "speedup": 2.0, "decode_rate": 1500.0}},
        "tuning": {"small PNGs": {"2 processes": [pool, calling]}, "photos": {"2 processes": [pool]}},
        "cpu": {
            # 4 us here and 31 us in the workers per sample; the round that loaded in the calling process does not count
            "small PNGs": {"2 processes": [[[0.004, 0.031, 1000]] * EPOCHS, [[0.04, 0.0, 1000]] * EPOCHS]},
            "photos": {"2 processes": [[[0.01, 0.6, 1000]] * EPOCHS]},
        },
    }
    assert process_costs(report, "small PNGs") == pytest.approx((4e-6, 31e-6))
    assert process_costs(report, "short sequences") is None
    lines = format_small(report).splitlines()
    start = lines.index("what 2 processes cost, and reach on more cores (epochs the pool loaded):")
    expected = "small PNGs main process 4.0 us + workers 31.0 us per sample: at most 250,000/s (the main process);"
    assert lines[start + 1].split() == [*expected.split(), "on", "16", "cores", "250,000/s,", "on", "64", "250,000/s"]
    assert "on 16 cores 26,230/s, on 64 100,000/s" in lines[start + 2]
    assert lines[start + 3].endswith("16 x single-core decode = 24,000/s: processes keep up on 16 cores")
