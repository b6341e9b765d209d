"""The fairness report on real UTKFace faces: data.prepare's race sidecar written and read back, and eval.py's
groups (race, gender, age decade, children apart) against a direct computation from per-face predictions."""
import csv
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest

import eval as eval_cli
from agegender import config
from agegender.decode import decode_age_as, decode_age_expected, decode_gender
from agegender.errors import DataError
from agegender.model import AgeGenderModel
from data.prepare import prepare
from data.records import PackReader, PackWriter, encode_face, meta_path, write_pack_meta

PER_RACE = 6


@pytest.fixture(scope="module")
def subset(shared, tmp_path_factory):
    """A CSV of UTKFace chips: PER_RACE val faces of each race spread over the ages (babies included), and
    the two faces whose race is unknown (-1), all put in split val; returns (csv path, rows)."""
    folder = os.path.join(shared, "data", "utkface")
    with open(os.path.join(folder, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = []
    for race in range(len(config.RACE_NAMES)):
        same = sorted((r for r in rows if r["split"] == "val" and r["race"] == str(race)), key=lambda r: int(r["age"]))
        chosen += same[:: len(same) // PER_RACE][:PER_RACE]
    chosen += [r for r in rows if r["race"] == "-1"]
    path = tmp_path_factory.mktemp("fair") / "faces.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "age", "gender", "race", "split"])
        for row in chosen:
            writer.writerow([os.path.join(folder, row["path"]), row["age"], row["gender"], row["race"], "val"])
    return str(path), chosen


@pytest.fixture(scope="module")
def pack(subset, tmp_path_factory):
    """val.rec/.idx/.meta.csv made by data.prepare from the subset (already aligned chips: resized only)."""
    out = tmp_path_factory.mktemp("pack")
    summary = prepare(subset[0], str(out), workers=1, aligned=True, progress=False)
    assert summary["records"] == {"val": len(subset[1])}
    return out


def expected_race(row):
    return int(row["race"]) if int(row["race"]) >= 0 else None


def test_prepare_writes_and_rebuilds_the_race_sidecar(shared, subset, pack, tmp_path):
    csv_path, rows = subset
    with PackReader(str(pack / "val.rec")) as reader:
        meta = reader.read_meta()
        assert meta["source"] == [os.path.join(shared, "data", "utkface", r["path"]) for r in rows]
        assert meta["race"] == [expected_race(r) for r in rows]
        assert reader.labels.astype(int).tolist() == [[int(r["gender"]), int(r["age"])] for r in rows]
    # --meta-only rebuilds the same sidecar for an existing pack from its source
    written = (pack / "val.meta.csv").read_bytes()
    os.remove(meta_path(str(pack / "val.rec")))
    assert prepare(csv_path, str(pack), workers=1, aligned=True, progress=False, meta_only=True)["meta"] == \
        {"val": len(rows)}
    assert (pack / "val.meta.csv").read_bytes() == written
    # ... and refuses a source the pack was not made from
    other = tmp_path / "other.csv"
    text = open(csv_path).read().splitlines()
    fields = text[3].split(",")
    fields[1] = str(int(fields[1]) + 1)
    other.write_text("\n".join(text[:3] + [",".join(fields)] + text[4:]) + "\n")
    shutil.copy(pack / "skipped.csv", tmp_path / "skipped.csv")
    for name in ("val.rec", "val.idx"):
        shutil.copy(pack / name, tmp_path / name)
    with pytest.raises(DataError, match=r"val\.rec: record 2 is labelled .* another source"):
        prepare(str(other), str(tmp_path), workers=1, aligned=True, progress=False, meta_only=True)
    assert not os.path.exists(tmp_path / "val.meta.csv")
    # a sidecar that does not list the pack's records is refused; a pack rewritten without sources drops it
    write_pack_meta(str(tmp_path / "val.rec"), [(key, "x.jpg", 1) for key in range(len(rows) + 1)])
    with PackReader(str(tmp_path / "val.rec")) as reader, pytest.raises(DataError, match="does not match the pack"):
        reader.read_meta()
    with PackWriter(str(tmp_path / "val")) as writer:
        writer.write(encode_face(np.full((112, 112, 3), 90, np.uint8)), 1, 30)
    assert not os.path.exists(tmp_path / "val.meta.csv")


def direct_groups(rows, fc1, age_decoding):
    """Per-group figures computed here from the per-face predictions, by plain loops over the faces."""
    age_pred = decode_age_as(fc1, age_decoding)
    age_expected, gender_pred = decode_age_expected(fc1), decode_gender(fc1)[0]
    faces = [{"age": int(r["age"]), "gender": int(r["gender"]), "race": expected_race(r), "pred": int(p),
              "expected": float(e), "gender_pred": int(g)} for r, p, e, g in zip(rows, age_pred, age_expected,
                                                                                 gender_pred)]

    def figures(members):
        def acc(subset):
            return (sum(f["gender_pred"] == f["gender"] for f in subset) / len(subset)) if subset else None
        return {"n": len(members),
                "mae": sum(abs(f["pred"] - f["age"]) for f in members) / len(members),
                "mae_expected": sum(abs(f["expected"] - f["age"]) for f in members) / len(members),
                "cs5": sum(abs(f["pred"] - f["age"]) <= 5 for f in members) / len(members),
                "gender_acc": acc(members), "n_gender": len(members),
                "gender_acc_under10": acc([f for f in members if f["age"] < 10]),
                "n_gender_under10": sum(f["age"] < 10 for f in members),
                "gender_acc_age10plus": acc([f for f in members if f["age"] >= 10]),
                "n_gender_age10plus": sum(f["age"] >= 10 for f in members)}

    names = {None: "unknown", **dict(enumerate(config.RACE_NAMES))}
    by_race, by_gender, by_decade = {}, {}, {}
    for f in faces:
        by_race.setdefault(names[f["race"]], []).append(f)
        by_gender.setdefault(("female", "male")[f["gender"]], []).append(f)
        tens = min(f["age"] // 10, 10)
        by_decade.setdefault("100+" if tens == 10 else f"{10 * tens}-{10 * tens + 9}", []).append(f)
    return {"all": figures(faces), **{key: {name: figures(members) for name, members in groups.items()}
                                      for key, groups in (("by_race", by_race), ("by_gender", by_gender),
                                                          ("by_decade", by_decade))}}


def assert_same(report, expected):
    assert set(report) == set(expected)
    for key in expected:
        if key == "all":
            assert report[key] == pytest.approx(expected[key], abs=1e-9)
            continue
        assert set(report[key]) == set(expected[key]), key
        for name in expected[key]:
            assert report[key][name] == pytest.approx(expected[key][name], abs=1e-9), (key, name)


def test_eval_groups_agree_with_per_face_predictions(subset, pack, tmp_path):
    csv_path, rows = subset
    out_json, out_png = tmp_path / "val.json", tmp_path / "val.png"
    assert eval_cli.main(["--data", str(pack / "val.rec"), "--json", str(out_json), "--plot", str(out_png)]) == 0
    report = json.loads(out_json.read_text())["fairness"]

    counts = Counter(expected_race(r) for r in rows)
    assert {name: group["n"] for name, group in report["by_race"].items()} == \
        {("unknown" if code is None else config.RACE_NAMES[code]): n for code, n in counts.items()}
    assert list(report["by_race"]) == list(config.RACE_NAMES) + ["unknown"]
    children = sum(int(r["age"]) < 10 for r in rows)
    assert 0 < children < len(rows)
    assert report["all"]["n_gender_under10"] == children
    assert report["all"]["n_gender_age10plus"] == len(rows) - children

    with PackReader(str(pack / "val.rec")) as reader:
        faces = [reader.read_image(key)[1] for key in reader.keys]
    model = AgeGenderModel(config.DEFAULT_MODEL)      # with the shipped model's own decoding and flip
    fc1 = model.predict(faces)[1]
    assert_same(report, direct_groups(rows, fc1, model.age_decoding))
    assert out_png.stat().st_size > 1000


def test_eval_csv_with_race_and_pack_without_sidecar(subset, pack, tmp_path):
    csv_path, rows = subset
    model = AgeGenderModel(config.DEFAULT_MODEL)
    from_pack = eval_cli.evaluate(model, eval_cli.pack_faces(str(pack / "val.rec")))["fairness"]
    # the CSV of the same chips, aligned as data.prepare does: the same faces, so the same report
    from_csv = eval_cli.evaluate(model, eval_cli.csv_faces(csv_path, "val", aligned=True))["fairness"]
    assert from_csv == from_pack
    # a pack without its sidecar still evaluates, only without race groups
    for name in ("val.rec", "val.idx"):
        shutil.copy(pack / name, tmp_path / name)
    bare = eval_cli.evaluate(model, eval_cli.pack_faces(str(tmp_path / "val.rec")))["fairness"]
    assert "by_race" not in bare
    assert bare == {key: value for key, value in from_pack.items() if key != "by_race"}
