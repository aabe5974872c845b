"""The command line follows click's conventions: -v/-q on every command, help and a default on
every option, extract's --help in sections with examples, whole one-line summaries, metavars
for lists, --json where a script reads the result, and --storage-options for every store."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from pathlib import Path

import click
import pytest
import zarr

import actextract
from actextract.cli.commands import main
from actextract.cli.extract_options import EXAMPLES

HERE = Path(__file__).parent
# 96 digits in 3 row blocks of 32 rows
RUN = ["--model", "digits-cnn", "--dataset", "digits", "--layers", "fc1", "--limit", "96"]
RUN += ["--batch-size", "32", "--chunk-rows", "32", "--device", "cpu"]
STORE_COMMANDS = ["extract", "info", "verify", "render", "cluster", "train-demo"]


def commands() -> dict[str, click.Command]:
    return {"actextract": main, **main.commands}


def options(command: click.Command) -> list[click.Option]:
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    return [p for p in command.get_params(ctx) if isinstance(p, click.Option)]


def help_records(command: click.Command) -> dict[str, tuple[str, str]]:
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    return {p.name: p.get_help_record(ctx) for p in options(command)}


@pytest.fixture(scope="module")
def done_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conventions") / "run.zarr"
    store = actextract.extract(
        "digits-cnn", "digits", layers="fc1", limit=96, batch_size=32, chunk_rows=32,
        device="cpu", progress=False, out=out,
    )  # fmt: skip
    assert store.complete
    return out


def unfinished(done_store: Path, tmp_path: Path) -> Path:
    """A copy of the store with block 1 not done (as a killed run leaves it)."""
    out = tmp_path / "half.zarr"
    shutil.copytree(done_store, out)
    zarr.open_array(out / "progress" / "done", mode="r+")[1] = 0
    zarr.open_group(out, mode="r+").attrs["status"] = "incomplete"
    return out


# -- 1. -v and -q on every command -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_takes_verbose_and_quiet(runner, name):
    flags = {o for p in options(commands()[name]) for o in p.opts}
    assert {"-v", "--verbose", "-q", "--quiet"} <= flags
    args = [] if name == "actextract" else [name]
    for given in (["-v"], ["-vv"], ["-q"], ["--verbose"], ["--quiet"]):
        res = runner.invoke(main, [*args, *given, "--help"])
        assert res.exit_code == 0, (given, res.output)


def test_verbose_and_quiet_together_are_refused(runner):
    for args in (["layers", "-v", "-q", "digits-cnn"], ["-q", "layers", "-v", "digits-cnn"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and "give -v (more output) or -q" in res.output, args


NOISY = """
import logging, sys
sys.path.insert(0, {here!r})
from _fixtures import tiny_cnn

def model():
    log = logging.getLogger("actextract.tests.noisy")
    log.info("an info note")
    log.warning("a warning")
    log.error("an error")
    return tiny_cnn()
"""


@pytest.mark.parametrize(
    ("where", "shown", "hidden"),
    [
        ([], ["WARNING", "ERROR", "images in"], ["INFO"]),
        (["-v"], ["INFO actextract.tests.noisy: an info note", "WARNING", "ERROR"], ["DEBUG"]),
        (["-q"], ["ERROR actextract.tests.noisy: an error"], ["INFO", "WARNING", "images in"]),
    ],
    ids=["default", "verbose", "quiet"],
)
def test_the_log_level_follows_verbose_and_quiet(runner, tmp_path, where, shown, hidden):
    spec = tmp_path / "noisy.py"
    spec.write_text(NOISY.format(here=str(HERE)))
    args = ["extract", *where, "--model", f"python:{spec}:model", "--dataset"]
    args += ["synthetic:8:3:8:8", "--layers", "block", "--device", "cpu", "--out"]
    res = runner.invoke(main, [*args, str(tmp_path / "n.zarr")])
    assert res.exit_code == 0, res.output
    for text in shown:
        assert text in res.output, (text, res.output)
    for text in hidden:
        assert text not in res.output, (text, res.output)
    if where == ["-q"]:
        assert res.stdout == ""  # nothing but the error line, on stderr


def test_a_command_leaves_logging_as_it_found_it(runner, tmp_path):
    root, package = logging.getLogger(), logging.getLogger("actextract")
    before = (list(root.handlers), root.level, package.level)
    assert runner.invoke(main, ["-v", "layers", "digits-cnn"]).exit_code == 0
    assert runner.invoke(main, ["layers", "-q", "digits-cnn"]).exit_code == 0
    assert runner.invoke(main, ["-v", "layers", "-q", "digits-cnn"]).exit_code == 2
    assert (list(root.handlers), root.level, package.level) == before


# -- 2. and 3. a resume with -v: the notice at INFO, the summary once -------------------------
@pytest.mark.parametrize("before", [True, False], ids=["actextract -v extract", "extract -v"])
def test_a_resume_notes_the_done_blocks_at_info_and_prints_the_summary_once(
    runner, done_store, tmp_path, before
):
    out = unfinished(done_store, tmp_path)
    args = ["extract", *RUN, "--out", str(out), "--resume"]
    args = ["-v", *args] if before else [args[0], "-v", *args[1:]]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "INFO actextract.extraction.api" in res.output
    assert "2 of this run's 3 row blocks are already done; computing the other 1" in res.output
    assert "WARNING" not in res.output
    assert res.output.count("32 images in") == 1 and res.output.count("time: waiting") == 1
    assert actextract.open_store(out).complete


def test_a_resume_says_nothing_without_verbose(runner, done_store, tmp_path):
    out = unfinished(done_store, tmp_path)
    res = runner.invoke(main, ["extract", *RUN, "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "already done" not in res.output, res.output
    assert res.stderr == ""


# -- 4. help and a default on every option ------------------------------------------------------
def test_every_option_of_every_command_has_help_and_says_its_default():
    missing, silent = [], []
    for name, command in commands().items():
        for option in options(command):
            where = f"{name} {option.opts[-1]}"
            if not (option.help or "").strip():
                missing.append(where)
                continue
            record = help_records(command)[option.name][1]
            stated = "[default:" in record or "default" in option.help.lower()
            off = option.is_flag and not option.secondary_opts  # a flag: off unless given
            if not (stated or option.required or off):
                silent.append(where)
    assert not missing, f"options without help: {missing}"
    assert not silent, f"options whose help does not say their default: {silent}"


def test_defaults_are_shown_in_the_help(runner):
    out = runner.invoke(main, ["extract", "--help"], terminal_width=200).output
    assert "Samples per forward pass.  [default: 64; x>=1]" in out
    assert "[default: float16]" in out and "[env var: ACTEXTRACT_STORAGE_OPTIONS]" in out
    assert "[default: 0]" not in out  # -v counts; its help says what no -v gives


# -- 5. extract --help in sections, with examples -----------------------------------------------
SECTIONS = ["Model", "Data", "Layers", "Storage", "Speed", "Long runs", "Output and help"]


def test_extract_help_lists_its_options_in_sections_then_examples(runner):
    out = runner.invoke(main, ["extract", "--help"], terminal_width=80).output
    titles = [line[:-1] for line in out.splitlines() if line.endswith(":") and line[0] != " "]
    assert titles == [*SECTIONS, "Examples"]
    assert "\nOptions:" not in out  # nothing left over outside a section
    section = dict.fromkeys(SECTIONS, "")
    title = None
    for line in out.splitlines():
        title = line[:-1] if line[:-1] in section else title
        if title:
            section[title] += line + "\n"
    for title, flag in [
        ("Model", "--weights"),
        ("Data", "--dataset"),
        ("Layers", "--reduce"),
        ("Storage", "--storage-options"),
        ("Speed", "--batch-size"),
        ("Long runs", "--resume"),
        ("Output and help", "-q, --quiet"),
    ]:
        assert f"  {flag} " in section[title], (title, flag)
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize("example", range(3))
def test_each_example_uses_options_that_exist(example):
    what, command = EXAMPLES[example]
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:2] == ["actextract", "extract"] and what.endswith(":")
    extract = main.commands["extract"]
    ctx = extract.make_context("extract", args[2:], parent=click.Context(main))
    assert ctx.params["out"] and ctx.params["layers"]


# -- 6. whole one-line summaries in the command list --------------------------------------------
def test_the_command_list_shows_every_summary_whole_on_one_line(runner):
    out = runner.invoke(main, ["--help"], terminal_width=80).output
    listed = out.split("Commands:\n")[1].splitlines()
    assert len(listed) == len(main.commands)  # one line each: nothing wrapped
    for line, (name, command) in zip(listed, sorted(main.commands.items()), strict=True):
        summary = command.short_help
        assert summary and summary.endswith(".") and "..." not in line, name
        assert line.split() == [name, *summary.split()], line


# -- 7. metavars for lists ----------------------------------------------------------------------
def test_no_option_reads_as_a_bare_text(runner):
    bare = [
        f"{name} {first}"
        for name, command in commands().items()
        for first, _ in filter(None, help_records(command).values())
        if " TEXT" in first
    ]
    assert not bare, f"options with click's generic metavar: {bare}"
    out = runner.invoke(main, ["extract", "--help"]).output
    assert "--layers NAME[,NAME...]" in out and "--hist-range LO,HI" in out
    assert "--input-shape C,H,W" in runner.invoke(main, ["layers", "--help"]).output


# -- 8. --json for layers and verify ------------------------------------------------------------
def test_layers_json_is_the_table_alone_on_stdout(runner, tmp_path):
    res = runner.invoke(main, ["layers", "digits-cnn", "--json", "--layers", "conv*,fc1"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["model"], data["method"], data["dtype"]) == ("digits-cnn", "fx", "float16")
    layers = {row["name"]: row for row in data["layers"]}
    assert list(layers) == ["conv1", "conv2", "fc1"]
    assert layers["conv1"]["shape"] == [32, 26, 26] and layers["conv1"]["layout"] == "nchw"
    assert layers["conv1"]["bytes_per_sample"] == 32 * 26 * 26 * 2
    assert data["matched"] == {"conv*": 2, "fc1": 1}
    graph = tmp_path / "g.dot"
    res = runner.invoke(main, ["layers", "digits-cnn", "--json", "--graph", str(graph)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["graph"] == str(graph) and graph.exists()
    assert f"wrote {graph}" in res.stderr


def test_verify_json_keeps_the_exit_code(runner, done_store, tmp_path):
    res = runner.invoke(main, ["verify", str(done_store), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["state"], data["ok"], data["blocks_done"], data["n_blocks"]) == (
        "complete",
        True,
        3,
        3,
    )
    res = runner.invoke(main, ["verify", str(unfinished(done_store, tmp_path)), "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert (data["state"], data["ok"], data["blocks_done"]) == ("incomplete", False, 2)
    [problem] = data["problems"]
    assert (problem["kind"], problem["rows"], problem["blocks"]) == ("not-done", [32, 64], [1, 2])


# -- 9. --storage-options -----------------------------------------------------------------------
def store_args(name: str, path: str) -> list[str]:
    """A command line of ``name`` on the store at ``path``."""
    if name == "extract":
        return ["extract", *RUN, "--out", path]
    if name == "train-demo":
        checkpoint = str(Path(path).with_suffix(".pt"))  # replaced where path is a URL
        return [name, "--out", checkpoint, "--epochs", "1", "--record", path]
    extra = {"render": ["--out", "report"], "cluster": ["--layer", "fc1", "--k", "2"]}
    return [name, path, *extra.get(name, [])]


def test_every_store_command_takes_storage_options():
    for name in STORE_COMMANDS:
        option = {p.name: p for p in options(main.commands[name])}.get("storage_options")
        assert option is not None, name
        assert option.envvar == "ACTEXTRACT_STORAGE_OPTIONS" and option.metavar == "JSON"


@pytest.mark.parametrize("name", STORE_COMMANDS)
@pytest.mark.parametrize(
    ("value", "why"),
    [("{endpoint_url: x}", "is not JSON"), ("[1, 2]", "is a JSON list, not an object")],
)
def test_bad_storage_options_exit_2_naming_the_option(runner, tmp_path, name, value, why):
    args = store_args(name, str(tmp_path / "o.zarr"))
    env = {"ACTEXTRACT_STORAGE_OPTIONS": value}
    for given, environ in (([*args, "--storage-options", value], {}), (args, env)):
        res = runner.invoke(main, given, env=environ)
        assert res.exit_code == 2, (given, res.output)
        assert "'--storage-options'" in res.output and why in res.output
        assert '{"endpoint_url": "http://127.0.0.1:9000", "anon": true}' in res.output
    assert not (tmp_path / "o.zarr").exists()


class Opened(actextract.errors.ActextractError):
    pass


def test_train_demo_help_lists_storage_options(runner):
    res = runner.invoke(main, ["train-demo", "--help"])
    assert res.exit_code == 0 and "--storage-options JSON" in res.output, res.output
    assert "ACTEXTRACT_STORAGE_OPTIONS" in res.output


def test_train_demo_passes_storage_options_to_the_recorder(runner, monkeypatch, tmp_path):
    import actextract.record.recorder

    calls = []

    def recorder(model, **kwargs):
        calls.append(kwargs["storage_options"])
        raise Opened(f"recording into {kwargs['out']}")

    monkeypatch.setattr(actextract.record.recorder, "Recorder", recorder)
    args = store_args("train-demo", "s3://bucket/rec.zarr")
    args[2] = str(tmp_path / "cnn.pt")
    runner.invoke(main, args)
    runner.invoke(main, [*args, "--storage-options", '{"anon": true}'])
    env = {"ACTEXTRACT_STORAGE_OPTIONS": '{"endpoint_url": "http://127.0.0.1:9000"}'}
    res = runner.invoke(main, args, env=env)
    assert res.exit_code == 2 and "recording into s3://bucket/rec.zarr" in res.output
    assert calls == [None, {"anon": True}, {"endpoint_url": "http://127.0.0.1:9000"}]
    assert not (tmp_path / "cnn.pt").exists()


@pytest.mark.parametrize("name", ["info", "verify", "render", "cluster"])
def test_storage_options_reach_the_store_only_when_given(runner, monkeypatch, tmp_path, name):
    import actextract.store

    calls = []

    def open_store(path, **kwargs):
        calls.append(kwargs.get("storage_options", "not given"))
        raise Opened(f"opened {path}")

    monkeypatch.setattr(actextract.store, "open_store", open_store)
    args = store_args(name, "s3://bucket/run.zarr")
    runner.invoke(main, args)
    runner.invoke(main, [*args, "--storage-options", '{"anon": true}'])
    env = {"ACTEXTRACT_STORAGE_OPTIONS": '{"endpoint_url": "http://127.0.0.1:9000"}'}
    res = runner.invoke(main, args, env=env)
    assert res.exit_code == 2 and "opened s3://bucket/run.zarr" in res.output
    assert calls == ["not given", {"anon": True}, {"endpoint_url": "http://127.0.0.1:9000"}]


def test_extract_passes_storage_options_only_when_given(runner, monkeypatch, tmp_path):
    import actextract.extraction.api

    calls = []

    def extract(model, dataset, **kwargs):
        calls.append(kwargs.get("storage_options", "not given"))
        raise Opened("extracted")

    monkeypatch.setattr(actextract.extraction.api, "extract", extract)
    args = ["extract", *RUN, "--out", "s3://bucket/run.zarr"]
    assert runner.invoke(main, args).exit_code == 2
    assert runner.invoke(main, [*args, "--storage-options", '{"anon": true}']).exit_code == 2
    assert calls == ["not given", {"anon": True}]


def test_storage_options_open_the_store_they_are_given_for(runner, tmp_path):
    """A file:// URL with fsspec options, written, read and checked: the library takes them."""
    url, given = (tmp_path / "run.zarr").as_uri(), ["--storage-options", '{"auto_mkdir": true}']
    res = runner.invoke(main, ["extract", *RUN, "--out", url, *given])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["info", url, "--json"], env={"ACTEXTRACT_STORAGE_OPTIONS": "{}"})
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "complete", res.output
    res = runner.invoke(main, ["verify", url, *given, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"], res.output


def test_quiet_keeps_the_errors(runner, tmp_path):
    out = tmp_path / "x.zarr"
    res = runner.invoke(main, ["extract", "-q", *RUN[:5], "layer5", *RUN[6:], "--out", str(out)])
    assert res.exit_code == 2 and "layer 'layer5' is not in digits-cnn" in res.output
    assert not out.exists()
