"""Stores in an S3 bucket, as users run them: moto's S3 server on loopback (tests/_s3.py, IAM
authentication on), reached through ``storage_options`` / ``--storage-options`` or the AWS
environment variables. A whole run, a kill and its resume, two shards writing one bucket, a
damaged object found by verify, a report rendered from the bucket, and the failures a user
meets first (a missing bucket, a wrong key, an endpoint that does not answer) as errors that
name the URL and the fix, exit 2."""

from __future__ import annotations

import json
import logging
import signal

import numpy as np
import pytest
from _runner import ARGS, ENV, SMALL, SMALL_BLOCKS, run, same_store, start
from click.testing import CliRunner

import actextract
from actextract.cli.commands import main
from actextract.errors import OptionError, StoreError
from actextract.store import location
from actextract.store.remote import probe

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    import _s3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server, s3 = _s3.start()
    yield s3
    server.stop()


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def aws_env(s3, **changes: str) -> dict[str, str]:
    """The environment a process reaches the bucket with: AWS's variables, no options."""
    env = {
        **ENV,
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    return {**env, **changes}


# -- a run in a bucket ----------------------------------------------------------------------
def test_a_run_into_a_bucket_equals_a_local_one(s3, small_reference, tmp_path, monkeypatch):
    url = f"s3://{s3.bucket()}/runs/digits.zarr"
    probes = []
    monkeypatch.setattr(location, "_REACHED", {})
    monkeypatch.setattr(location, "probe", lambda *a: probes.append(a) or probe(*a))
    store = actextract.extract(**SMALL, out=url, storage_options=s3.options)
    assert store.complete and str(store.location) == url
    assert len(probes) == 1  # the bucket is asked once, not at each question about the URL
    same_store(store, small_reference)
    keys = s3.keys(url.split("/")[2])
    assert "runs/digits.zarr/zarr.json" in keys and not any(".partial" in k for k in keys)

    # every reader takes the URL with its options, or the store open_store gave
    opened = actextract.open_store(url, storage_options=json.dumps(s3.options))
    same_store(opened, small_reference)
    info = actextract.store_info(url, storage_options=s3.options)
    assert info["status"] == "complete" and info["blocks_done"] == SMALL_BLOCKS
    assert actextract.verify(url, storage_options=s3.options).ok
    xr = actextract.to_xarray(url, "fc1", storage_options=s3.options)
    np.testing.assert_array_equal(xr.values, small_reference["fc1"][:])


def test_the_cli_takes_storage_options_for_every_store_command(s3, tmp_path):
    url = f"s3://{s3.bucket()}/cli.zarr"
    options = json.dumps(s3.options)
    done = cli(*ARGS[:-4], "--limit", "128", "--out", url, "--storage-options", options)
    assert done.exit_code == 0, done.output
    shown = cli("info", url, "--storage-options", options, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["status"] == "complete"
    checked = cli("verify", url, "--storage-options", options)
    assert checked.exit_code == 0, checked.output
    report = tmp_path / "report"
    drawn = cli("render", url, "--out", str(report), "--storage-options", options)
    assert drawn.exit_code == 0, drawn.output
    assert (report / "index.html").is_file() and list(report.glob("*.png"))


def test_a_run_killed_mid_way_resumes_in_the_bucket(s3, reference):
    """The AWS environment variables alone reach the server: the subprocess gets no options."""
    url = f"s3://{s3.bucket()}/killed.zarr"
    killed = run(*ARGS, "--out", url, kill="mid-block:3", env=aws_env(s3))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = actextract.open_store(url, storage_options=s3.options)
    assert store.status == "incomplete" and not store.done().all()
    assert store.done()[:3].any()
    resumed = run(*ARGS, "--out", url, "--resume", env=aws_env(s3))
    assert resumed.returncode == 0, resumed.stderr
    same_store(actextract.open_store(url, storage_options=s3.options), reference)


def test_two_shards_write_one_bucket_at_once(s3, reference):
    url = f"s3://{s3.bucket()}/sharded.zarr"
    procs = [start(*ARGS, "--out", url, "--shard", f"{i}/2", env=aws_env(s3)) for i in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = actextract.open_store(url, storage_options=s3.options)
    assert store.complete
    same_store(store, reference)
    assert actextract.verify(store).ok


def test_a_root_another_process_wrote_is_seen_after_a_listing(s3):
    """s3fs keeps the listings it made: a shard that listed a store half created (objects,
    no root yet) must still see the root once the creator writes it."""
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="half.zarr/labels/zarr.json", Body=b"{}")
    where = location.Location.parse(f"s3://{bucket}/half.zarr", s3.options)
    assert where.exists() and not where.is_store()  # listed: no root
    s3.client().put_object(Bucket=bucket, Key="half.zarr/zarr.json", Body=b"{}")
    assert where.is_store()


def test_verify_finds_a_damaged_object_and_resume_mends_it(s3, small_reference):
    bucket = s3.bucket()
    url = f"s3://{bucket}/damaged.zarr"
    actextract.extract(**SMALL, out=url, storage_options=s3.options)
    chunk = s3.keys(bucket, "damaged.zarr/acts/conv1/c/")[2]  # block 2's chunk
    assert chunk.startswith("damaged.zarr/acts/conv1/c/2/")
    s3.client().put_object(Bucket=bucket, Key=chunk, Body=b"not a chunk")
    report = actextract.verify(url, storage_options=s3.options)
    assert report.state == "damaged"
    assert [(p.array, p.blocks) for p in report.problems] == [("conv1", (2, 3))]
    repaired = actextract.verify(url, storage_options=s3.options, repair=True)
    assert repaired.reset_blocks == [2]
    resumed = actextract.extract(**SMALL, out=url, storage_options=s3.options, resume=True)
    assert resumed.complete and actextract.verify(resumed).ok
    same_store(resumed, small_reference)


@pytest.fixture(scope="module")
def open_s3():
    import _s3

    server, s3 = _s3.start_public()
    yield s3
    server.terminate()
    server.wait(timeout=30)


def test_anonymous_access_to_a_public_server(open_s3, small_reference):
    admin = open_s3.client()  # any key: the server checks none
    admin.create_bucket(Bucket="open-data")
    everyone = {"Effect": "Allow", "Principal": "*", "Action": "s3:*"}
    resources = ["arn:aws:s3:::open-data", "arn:aws:s3:::open-data/*"]
    policy = {"Version": "2012-10-17", "Statement": [{**everyone, "Resource": resources}]}
    admin.put_bucket_policy(Bucket="open-data", Policy=json.dumps(policy))
    anon = json.dumps({"endpoint_url": open_s3.endpoint, "anon": True})  # unsigned requests
    url = "s3://open-data/runs/digits.zarr"
    store = actextract.extract(**SMALL, out=url, storage_options=anon)
    assert store.complete
    done = cli("info", url, "--storage-options", anon, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["status"] == "complete"
    same_store(actextract.open_store(url, storage_options=anon), small_reference)

    admin.create_bucket(Bucket="closed")  # no policy: its objects are not everyone's
    admin.put_object(Bucket="closed", Key="run.zarr/zarr.json", Body=b"{}")
    refused = cli("info", "s3://closed/run.zarr", "--storage-options", anon)
    assert refused.exit_code == 2, refused.output
    assert "s3://closed/run.zarr" in refused.output and "Traceback" not in refused.output
    assert "refused anonymous access" in refused.output and "key and secret" in refused.output


# -- what a user gets wrong first -------------------------------------------------------------
def test_a_missing_bucket_is_named_with_the_fix(s3):
    options = json.dumps(s3.options)
    done = cli(*ARGS[:-4], "--out", "s3://no-such-bucket/r.zarr", "--storage-options", options)
    assert done.exit_code == 2, done.output
    assert "s3://no-such-bucket/r.zarr" in done.output and "bucket 'no-such-bucket'" in done.output
    assert "does not exist" in done.output and "Traceback" not in done.output
    shown = cli("info", "s3://no-such-bucket/r.zarr", "--storage-options", options)
    assert shown.exit_code == 2 and "does not exist" in shown.output


def test_wrong_credentials_are_named_with_the_fix(s3):
    url = f"s3://{s3.bucket()}/r.zarr"
    wrong = json.dumps({**s3.options, "secret": "not-the-secret"})
    done = cli(*ARGS[:-4], "--out", url, "--storage-options", wrong)
    assert done.exit_code == 2, done.output
    assert url in done.output and "refused these credentials" in done.output
    assert "--storage-options" in done.output and "AWS_ACCESS_KEY_ID" in done.output
    with pytest.raises(StoreError, match="refused these credentials"):
        actextract.open_store(url, storage_options={**s3.options, "key": "AKIANOTAKEY"})


def test_an_endpoint_that_does_not_answer_fails_in_bounded_time(s3):
    """Port 1 on loopback refuses every connection; the subprocess's timeout is the bound."""
    url = f"s3://{s3.bucket()}/r.zarr"
    env = aws_env(s3, AWS_ENDPOINT_URL="http://127.0.0.1:1")
    done = run("info", url, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert url in done.stderr and "does not answer" in done.stderr
    assert "http://127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr


def test_render_out_must_be_a_local_folder(s3):
    url = f"s3://{s3.bucket()}/r.zarr"
    done = cli(
        "render", url, "--out", "s3://bucket/report", "--storage-options", json.dumps(s3.options)
    )
    assert done.exit_code == 2, done.output
    assert "local folder" in done.output and "aws s3 cp --recursive" in done.output
    with pytest.raises(OptionError, match="local folder"):
        actextract.render(url, "gs://bucket/report", storage_options=s3.options)


@pytest.mark.parametrize(
    "given, says",
    [("{not json", "is not JSON"), ("[1, 2]", "must be a JSON object")],
)
def test_storage_options_that_do_not_parse_are_refused(given, says):
    with pytest.raises(OptionError, match=says):
        actextract.open_store("s3://bucket/r.zarr", storage_options=given)


def test_a_server_error_is_worded_not_a_traceback():
    """s3fs gives an HTTP 5xx as OSError(EREMOTEIO): a moto server with authentication on
    answers an unsigned request so."""
    import errno

    from actextract.store.remote import remote_error_message

    said = remote_error_message(
        OSError(errno.EREMOTEIO, "Internal Server Error"), "s3://b/r.zarr", {"anon": True}
    )
    assert said is not None and "'s3://b/r.zarr'" in said and "the server's error" in said
    assert remote_error_message(OSError(errno.EIO, "disk"), "s3://b/r.zarr", None) is None
