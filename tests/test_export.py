"""`midpo export`: merged weights, standalone adapters and a self-contained MidPO folder.

The references are independent of export.py: the MidPO model at fixed gates (itself checked against
peft in test_midpo_model.py), plain `AutoModelForCausalLM` in a fresh process that never imports
midpo, and peft's `PeftModel` for the adapters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from midpo_cli.cli import main
from midpo_cli.errors import InputError
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.lora import lora_config, read_adapter
from midpo_cli.modeling.midpo import RouterSettings, load_midpo, save_midpo, wrap

EMBEDDED = "embedded:tiny-llama"


def build_tiny_midpo(root: Path, *, granularity: str = "token", target_modules=("down_proj",),
                     seed: int = 0, tokenizer=None) -> Path:
    """A MidPO folder on the embedded base (no weight files on disk) with non-trivial experts and routers;
    `tokenizer` (default: the embedded one) is the one saved with it."""
    adapters = {}
    for i, name in enumerate(("safety", "helpfulness")):
        torch.manual_seed(seed + 10 + i)
        peft_model = get_peft_model(load_causal_lm(EMBEDDED), lora_config(r=4, alpha=8, target_modules=target_modules))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
        adapters[name] = root / f"adapter-{name}"
        peft_model.save_pretrained(str(adapters[name]), save_embedding_layers=False)
    model = wrap(load_causal_lm(EMBEDDED), read_adapter(adapters["safety"]), read_adapter(adapters["helpfulness"]),
                 RouterSettings(granularity=granularity)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    model.load_router_state_dict({k: torch.randn(v.shape, generator=gen) * 0.3
                                  for k, v in model.router_state_dict().items()})
    return save_midpo(model, tokenizer or load_tokenizer(EMBEDDED), root / "midpo", base_model=EMBEDDED)


def toy_prompts(n_each: int, skip: int = 0) -> tuple[list[str], list[bool]]:
    """Harmful and benign prompts of the embedded toy world's eval set, alternating, with their kinds."""
    from midpo_cli.data.prompt_sets import load_prompt_set

    rows = load_prompt_set("embedded:toy-safety/eval-prompts").prompts
    harmful = [r["prompt"] for r in rows if r["is_harmful"]][skip:skip + n_each]
    benign = [r["prompt"] for r in rows if not r["is_harmful"]][skip:skip + n_each]
    return [p for pair in zip(harmful, benign, strict=True) for p in pair], [True, False] * n_each


def build_tiny_switch(root: Path, *, mode: str = "hard", n_each: int = 8) -> Path:
    """A probe-switch folder on the tiny MidPO model: the switch fit (the router stage's own fit) on `toy_prompts`,
    which it separates, so both experts get chosen on them."""
    from midpo_cli.modeling.switch import fit_switch, prompt_text_features

    model, tokenizer = load_midpo(build_tiny_midpo(root))
    texts, kinds = toy_prompts(n_each)
    model.switch = fit_switch(prompt_text_features(model, tokenizer, "safe-rlhf", texts), kinds, mode)
    return save_midpo(model, tokenizer, root / "switch", base_model=EMBEDDED, template="safe-rlhf")


@pytest.fixture(scope="module")
def tiny_midpo(tmp_path_factory) -> Path:
    return build_tiny_midpo(tmp_path_factory.mktemp("export"))


def probe_ids() -> torch.Tensor:
    return torch.randint(4, 700, (2, 12), generator=torch.Generator().manual_seed(3))


def midpo_logits_at(folder: Path, gates) -> torch.Tensor:
    model, _ = load_midpo(folder, fixed_gates=gates)
    with torch.no_grad():
        return model(probe_ids()).logits


FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
torch.save(logits, sys.argv[3])
print("MIDPO_IMPORTED=" + str(any(m == "midpo_cli" or m.startswith("midpo_cli.") for m in sys.modules)))
"""


def test_merged_export_equals_midpo_at_fixed_gates_in_a_process_without_midpo(tiny_midpo, tmp_path):
    gates = (0.7, 0.2)
    out = tmp_path / "merged"
    assert main(["--quiet", "export", str(tiny_midpo), "--merged", "--gates", "0.7,0.2", "--to", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer_config.json").is_file() and "0.7" in (out / "README.md").read_text()
    assert not (out / "midpo_config.json").exists()

    logits_file = tmp_path / "logits.pt"
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(out), json.dumps(probe_ids().tolist()),
                           str(logits_file)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "MIDPO_IMPORTED=False" in proc.stdout
    merged = torch.load(logits_file)
    expected = midpo_logits_at(tiny_midpo, gates)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)
    # the experts do move the logits at these gates, so the equality above is not the base's
    assert (expected - midpo_logits_at(tiny_midpo, (0.0, 0.0))).abs().max() > 1e-3
    # the embedded base ties lm_head to the embeddings; the merged folder keeps that
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True


def chat_template_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a chat API encodes it: the folder's chat template rendered, no special tokens added."""
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=True)["input_ids"]) for p in prompts]


@pytest.mark.parametrize("bos", [False, True], ids=["no BOS", "BOS"])
def test_merged_export_answers_through_its_chat_template_as_midpo_at_its_gates(tiny_midpo, tmp_path, bos):
    """A chat API renders the export's chat template and adds no special tokens: on 40 prompts the merged folder,
    through plain transformers, gets the token ids training saw and gives the answers of MidPO at the same gates.
    With a tokenizer that adds no BOS the template writes none (it used to write `<s>`, which training never saw);
    with one that adds it, the template writes it."""
    import shutil

    from test_chat_templates import with_bos
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midpo_cli.data.tokenize import encode_prompts, pad_sequences
    from midpo_cli.modeling.generation import generate_answers

    folder = tiny_midpo
    if bos:  # the same model, its tokenizer adding BOS
        folder = Path(shutil.copytree(tiny_midpo, tmp_path / "bos"))
        with_bos().save_pretrained(str(folder))
    out = tmp_path / "merged"
    assert main(["--quiet", "export", str(folder), "--merged", "--gates", "0.5,1", "--to", str(out)]) == 0
    prompts = toy_prompts(20)[0]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = chat_template_ids(tokenizer, prompts)
    assert ids == encode_prompts(prompts, tokenizer, "safe-rlhf")[0]
    assert {row[0] == tokenizer.bos_token_id for row in ids} == {bos}
    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    batch = pad_sequences(ids, [len(x) for x in ids], tokenizer.pad_token_id, padding_side="left")
    with torch.no_grad():
        new = plain.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    answers = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    model, midpo_tokenizer = load_midpo(folder, fixed_gates=(0.5, 1.0))
    rows = sorted((r for b in generate_answers(model, midpo_tokenizer, prompts, template="safe-rlhf",
                                               max_new_tokens=6, batch_size=40) for r in b), key=lambda r: r["index"])
    assert answers == [r["answer"] for r in rows]
    assert len(set(answers)) > 1


def test_merged_export_unties_a_routed_tied_head(tmp_path):
    """Adapters on lm_head of a tied model: folding must not change the input embeddings."""
    folder = build_tiny_midpo(tmp_path, target_modules=("down_proj", "lm_head"), seed=4)
    from midpo_cli.modeling.export import export_merged

    out = tmp_path / "merged"
    export_merged(folder, out, (1.0, 0.5))
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert plain.config.tie_word_embeddings is False
    base = load_causal_lm(EMBEDDED)
    torch.testing.assert_close(plain.get_input_embeddings().weight, base.get_input_embeddings().weight,
                               rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(plain(probe_ids()).logits, midpo_logits_at(folder, (1.0, 0.5)), rtol=0, atol=1e-5)


def test_adapters_export_loads_with_peft_and_reproduces_each_expert(tiny_midpo, tmp_path):
    out = tmp_path / "adapters"
    assert main(["--quiet", "export", str(tiny_midpo), "--adapters", "--to", str(out)]) == 0
    assert {"safety", "helpfulness", "base", "README.md"} <= {p.name for p in out.iterdir()}
    assert "--enable-lora" in (out / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    for name, gates in (("safety", (1.0, 0.0)), ("helpfulness", (0.0, 1.0))):
        cfg = json.loads((out / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "./base"  # portable: relative to the export folder (issue 28)
        base = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, str(out / name)).eval()
        with torch.no_grad():
            torch.testing.assert_close(peft(probe_ids()).logits, midpo_logits_at(tiny_midpo, gates),
                                       rtol=0, atol=1e-5)


ROUTE_ALONE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("MIDPO_IMPORTED=" + str(any(m == "midpo_cli" or m.startswith("midpo_cli.") for m in sys.modules)))
"""


def test_adapters_export_of_a_switch_carries_the_classifier_that_picks_the_expert(tmp_path):
    """`router/route.py`, run with transformers alone on the exported base, gives the gates `midpo generate` gives
    on 20 prompts (both experts among them), and midpo's p(harmful) itself."""
    from midpo_cli.modeling.switch import prompt_probabilities

    switch = build_tiny_switch(tmp_path)
    out = tmp_path / "adapters"
    assert main(["--quiet", "export", str(switch), "--adapters", "--to", str(out)]) == 0
    assert {p.name for p in (out / "router").iterdir()} == {"route.py", "router.json", "switch.safetensors"}
    readme = (out / "README.md").read_text()
    assert "one extra prefill of the base per request" in readme and "router/route.py" in readme
    assert "--chat-template ./chat_template.jinja" in readme
    prompts = toy_prompts(10)[0]
    from transformers import AutoTokenizer

    from midpo_cli.data.tokenize import encode_prompts

    base_tokenizer = AutoTokenizer.from_pretrained(str(out / "base"))
    base_tokenizer.chat_template = (out / "chat_template.jinja").read_text()
    assert chat_template_ids(base_tokenizer, prompts) == encode_prompts(prompts, base_tokenizer, "safe-rlhf")[0]
    proc = subprocess.run([sys.executable, "-c", ROUTE_ALONE, str(out / "router" / "route.py"), *prompts],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "MIDPO_IMPORTED=False"
    routed = [json.loads(line) for line in lines[:-1]]
    answers = tmp_path / "answers.jsonl"
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert main(["--quiet", "generate", "-m", str(switch), "-p", str(tmp_path / "prompts.txt"), "-o", str(answers),
                 "--max-new-tokens", "2"]) == 0
    rows = sorted((json.loads(line) for line in answers.read_text().splitlines()), key=lambda r: r["index"])
    assert [r["gates"] for r in routed] == [[row["gates"]["safety"], row["gates"]["helpfulness"]] for row in rows]
    assert {r["expert"] for r in routed} == {"safety", "helpfulness"}
    model, tokenizer = load_midpo(switch)
    want = prompt_probabilities(model, model.switch, tokenizer, "safe-rlhf", prompts)
    assert [r["p_harmful"] for r in routed] == pytest.approx(want, abs=1e-6)


def test_midpo_export_of_a_switch_beside_a_learned_router_describes_the_switch(tmp_path):
    """The card of a probe switch names it and gives its numbers, not the learned router's verdict or metrics."""
    import shutil

    switch = build_tiny_switch(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(switch, run / "router" / "switch")
    shutil.copytree(tmp_path / "midpo", run / "router" / "model")
    (run / "router" / "manifest.json").write_text(json.dumps({
        "stage": "router", "outputs": {"model": "router/model", "switch": "router/switch"},
        "metrics": {"dpo_loss": 0.4}, "probe_switch": {
            "mode": "hard", "fit_on": "dual", "fit_on_prompts": 16, "fit_on_harmful": 8, "prompts": "dev",
            "threshold": 0.5, "dev_score": 0.91, "judged_by": "toy judge"}}))
    (run / "score").mkdir()
    (run / "score" / "summary.json").write_text(json.dumps({
        "verdict": [{"prompt_set": "eval-prompts", "label": "ties the best blend", "sentence": "ROUTER VERDICT"}],
        "routing": {"eval-prompts": {"router": {"model": "midpo"}, "probe_switch": {
            "model": "probe_switch", "n": 160, "score": 0.9, "router_score": 0.7,
            "diff": {"mean": -0.2, "lo": -0.3, "hi": -0.1}}}}}))
    out = tmp_path / "upload"
    assert main(["--quiet", "export", str(run / "router" / "switch"), "--midpo", "--to", str(out), "--run-dir",
                 str(run)]) == 0
    card = (out / "README.md").read_text()
    assert "**probe switch**" in card and "learned per-layer routers" not in card
    assert "probe switch (hard, threshold 0.5)" in card and "| `switch.safetensors` |" in card
    assert "ROUTER VERDICT" not in card and "dpo_loss" not in card  # the learned router's, not this model's
    assert "dev score 0.910" in card and "router 0.700 vs probe switch 0.900" in card
    assert json.loads((out / "midpo_config.json").read_text())["switch"]["threshold"] == 0.5


def test_midpo_export_is_self_contained_with_a_model_card(tiny_midpo, tmp_path):
    run = tmp_path / "run"
    (run / "router").mkdir(parents=True)
    (run / "router" / "manifest.json").write_text(json.dumps({"stage": "router", "metrics": {"dpo_loss": 0.4}}))
    (run / "router" / "config.yaml").write_text("beta: 0.1\ngranularity: token\n")
    (run / "score").mkdir()
    (run / "score" / "summary.json").write_text(json.dumps({"toy": [
        {"model": "midpo", "prompt_set": "eval-prompts", "harmful_safe": 0.98, "benign_helpful": 0.76,
         "toy_score": 0.87, "gate_safety_harmful": 0.8, "gate_safety_benign": 0.3},
        {"model": "base", "prompt_set": "eval-prompts", "harmful_safe": 0.5, "benign_helpful": 0.5,
         "toy_score": 0.5, "gate_safety_harmful": None, "gate_safety_benign": None}],
        "verdict": [{"prompt_set": "eval-prompts", "label": "ties the best blend",
                     "sentence": "ties the best blend — router 0.87 vs the dev-chosen blend (1, 1) 0.85"}]}))
    import shutil

    shutil.copytree(tiny_midpo, run / "router" / "model")
    out = tmp_path / "upload"
    assert main(["--quiet", "export", str(run / "router" / "model"), "--midpo", "--to", str(out)]) == 0
    shutil.rmtree(run)  # nothing may point back into the run
    cfg = json.loads((out / "midpo_config.json").read_text())
    assert cfg["base_model"] == "base" and cfg["base_model_relative"] is True
    assert cfg["adapters"] == {"safety": "adapters/safety", "helpfulness": "adapters/helpfulness"}
    assert (out / "base" / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: midpo" in card and "- dpo_loss: 0.400" in card
    assert "beta: 0.1" in (out / "training-recipe.yaml").read_text()  # the settings beside the card (issue 28)
    assert "midpo chat upload" in card and "midpo serve upload" in card
    assert "learned per-layer routers" in card and "(routers as trained)" not in card
    assert "| midpo | eval-prompts | 0.980 | 0.760 | 0.870 |" in card
    verdict = "- `eval-prompts`: **ties the best blend** — router 0.87 vs the dev-chosen blend (1, 1) 0.85"
    assert card.index("## Verdict") < card.index(verdict) < card.index("## Contents")  # the verdict comes first
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))
    loaded, _ = load_midpo(moved)
    original, _ = load_midpo(tiny_midpo)
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe_ids()).logits, original(probe_ids()).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--merged", "--gates", "0.5,1.5"], "must be in [0, 1]"),
    (["--merged"], "--merged needs --gates"),
    (["--adapters", "--midpo"], "exactly one of"),
    ([], "exactly one of"),
])
def test_bad_flags_are_one_line_errors(tiny_midpo, tmp_path, capsys, args, message):
    assert main(["export", str(tiny_midpo), "--to", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_existing_destination_and_non_midpo_source_are_refused(tiny_midpo, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_midpo), "--merged", "--gates", "0.5,0.5", "--to", str(busy)]) == 2
    assert "already exists" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    adapter = tiny_midpo / "adapters" / "safety"
    assert main(["export", str(adapter), "--merged", "--gates", "0.5,0.5", "--to", str(tmp_path / "y")]) == 2
    assert "not a MidPO model folder" in capsys.readouterr().err
    from midpo_cli.modeling.export import check_destination

    (tmp_path / "empty").mkdir()
    assert check_destination(tmp_path / "empty") == tmp_path / "empty"  # an empty folder is fine
    with pytest.raises(InputError, match="already exists"):
        check_destination(busy / "keep.txt")
