"""tools/choose_inference.py: every setting evaluated by eval.py, the rule applied, the sidecar read back."""
import json
import os
import shutil
import subprocess
import sys

from agegender import config
from agegender.decode import AGE_DECODINGS
from agegender.model import AgeGenderModel
from tools.choose_inference import choose


def test_settings_are_chosen_on_the_pack_and_used_by_the_model(original_model, tiny_pack, tmp_path):
    source_prefix = original_model.rsplit(",", 1)[0]
    prefix = tmp_path / "model"
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(source_prefix + suffix, str(prefix) + suffix)
    out = tmp_path / "choice"
    done = subprocess.run([sys.executable, "-m", "tools.choose_inference", "--model", f"{prefix},0",
                           "--data", str(tiny_pack / "val.rec"), "--out", str(out)],
                          cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = {}
    for decoding in AGE_DECODINGS:
        for flip in (False, True):
            result = json.loads((out / (decoding + ("-flip" if flip else "") + ".json")).read_text())
            assert result["age_decoding"] == decoding and result["flip"] == flip and result["n"] == 16
            results[decoding, flip] = result
    chosen = json.loads((tmp_path / ("model" + config.INFERENCE_SUFFIX)).read_text())
    assert chosen == choose(results)
    best = min(result["mae"] for (_, flip), result in results.items() if not flip)
    assert results[chosen["age_decoding"], False]["mae"] == best
    model = AgeGenderModel(f"{prefix},0")
    assert (model.age_decoding, model.flip) == (chosen["age_decoding"], chosen["flip"])
    assert f"chosen: {json.dumps(chosen)}" in done.stdout


def test_mirror_averaging_needs_a_lower_mae_and_no_gender_loss():
    def result(mae, gender_acc):
        return {"mae": mae, "gender_acc": gender_acc}
    results = {(d, False): result(6.0, 0.90) for d in AGE_DECODINGS}
    results.update({(d, True): result(5.9, 0.89) for d in AGE_DECODINGS})
    results["expected", False] = result(5.5, 0.90)
    results["expected", True] = result(5.4, 0.90)
    assert choose(results) == {"age_decoding": "expected", "flip": True}
    results["expected", True] = result(5.4, 0.89)
    assert choose(results) == {"age_decoding": "expected", "flip": False}
    results["expected", True] = result(5.6, 0.95)
    assert choose(results) == {"age_decoding": "expected", "flip": False}
