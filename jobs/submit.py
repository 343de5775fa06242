"""`posepipe submit`: run the main job on a Ray cluster through the Jobs API, with the same config as `posepipe run`.

    posepipe submit --address http://HEAD:8265 --input s3://bucket/videos --output s3://bucket/poses \\
        --config configs/cluster.yaml --set decode.cache_dir=/scratch --env AWS_ENDPOINT_URL=http://minio:9000

The repository travels as the job's working_dir (without .venv, .git, caches and outputs); the cluster runs
`python -m jobs.run ...` in it, connected to the cluster (`ray.address=auto`). The config is validated here first, so
a typo fails on the laptop, not after an upload. Logs stream back; the exit status is the job's own (0 clean,
3 partial, 2 bad config or input, 1 failed or stopped). This shell's credentials are not sent: the cluster's nodes
read object storage through their own AWS chain (instance role, IRSA, environment); `--env` is for settings such as
AWS_ENDPOINT_URL. Values of secret-looking names are never logged, and sending them draws a warning. A cluster with
Ray's token authentication is sent the token from RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or
~/.ray/auth_token, as Ray's own clients find it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.cli import ArgumentParser, UsageError, add_config_arguments, configure_logging, fail
from jobs.run import EXIT_FAILED, SECRET_KEYS, redact

if TYPE_CHECKING:
    import argparse

    from pipeline.config import RunConfig

logger = logging.getLogger("posepipe.submit")

REPO_ROOT = Path(__file__).resolve().parent.parent
EXCLUDES = ["/.venv", "/.git", "__pycache__", "*.egg-info", ".pytest_cache", "/build", "/dist", "/output", "/sample",
            "/data", "*.tmp"]                        # gitignore syntax; a leading / anchors at the working_dir
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def default_address() -> str:
    """Ray's own convention; a RAY_ADDRESS of the form host:6379 names the GCS, not the Jobs API, and is skipped."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    return os.environ.get("RAY_API_SERVER_ADDRESS") or (ray_address if ray_address.startswith("http") else "") \
        or DEFAULT_ADDRESS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("submit", __doc__)
    parser.add_argument("--address", default=default_address(),
                        help="the Ray dashboard (Jobs API) of the cluster: $RAY_API_SERVER_ADDRESS, an http "
                             f"$RAY_ADDRESS, or {DEFAULT_ADDRESS}")
    parser.add_argument("--input", help="URI of the archive, as the cluster sees it (e.g. s3://bucket/videos)")
    parser.add_argument("--output", help="URI for the Parquet tables, as the cluster sees it")
    add_config_arguments(parser, "decode.fps=5")
    parser.add_argument("--pip", action="append", default=[], metavar="REQ",
                        help="extra pip requirement installed for the job on every node (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                        help="environment variable for the job; KEY alone forwards this shell's value (repeatable)")
    parser.add_argument("--submission-id", help="job id to use; Ray refuses a second job with the same id, so a "
                                                "nightly scheduler can pass one per night")
    parser.add_argument("--working-dir", default=str(REPO_ROOT), help="code uploaded as the job's working_dir")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return after submitting")
    return parser.parse_args(argv)


def auth_headers() -> dict[str, str]:
    """Ray's bearer header for a cluster with token authentication (Ray 2.52+; `ray start --head` enables it where a
    token exists), with the token from where Ray's own clients look: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH
    names, or ~/.ray/auth_token. {} when there is none. Sent whatever this shell's RAY_AUTH_MODE says: a cluster
    without authentication ignores it."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if not token and path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the cluster's token ({exc.strerror}); point "
                             f"it at the file holding the token, or unset it") from None
    default = Path.home() / ".ray" / "auth_token"
    if not token and default.is_file():
        token = default.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


AUTH_HELP = ("give the cluster's token as RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in "
             "~/.ray/auth_token (on the head node `ray get-auth-token` prints it; on KubeRay it is the auth_token of "
             "the cluster's Secret)")


def is_secret(name: str) -> bool:
    return any(s in name.lower() for s in SECRET_KEYS)


def parse_env(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` or `KEY` (this shell's value) -> {KEY: VALUE}."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise UsageError(f"--env {key}: not set in this shell; give --env {key}=VALUE")
            value = os.environ[key]
        if not key or not key.replace("_", "").isalnum():
            raise UsageError(f"--env {item!r}: expected KEY=VALUE with KEY made of letters, digits and _")
        env[key] = value
    return env


def config_arguments(config_path: str | None, working_dir: Path) -> list[str]:
    """How the job finds the config: a file inside the working_dir by its relative path; any other file inlined
    section by section as `--set section=<json>`, which loads to the same config."""
    from pipeline.config import read_yaml

    if not config_path:
        return []
    path = Path(config_path).resolve()
    if path.is_relative_to(working_dir.resolve()):
        return ["--config", path.relative_to(working_dir.resolve()).as_posix()]
    return [a for key, value in read_yaml(path).items() for a in ("--set", f"{key}={json.dumps(value)}")]


def build_entrypoint(args: argparse.Namespace) -> list[str]:
    """The job's command line (before quoting)."""
    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "ray.address" for o in overrides):
        overrides.append("ray.address=auto")            # the cluster the job runs in, never a fresh local Ray
    command = ["python", "-m", "jobs.run", "--input", args.input, "--output", args.output]
    command += config_arguments(args.config, Path(args.working_dir))
    return command + [a for o in overrides for a in ("--set", o)]


def shown(command: list[str]) -> str:
    """The command line for logs: values of secret-looking `--set` keys and inlined sections replaced."""
    from pipeline.config import parse_override

    out = []
    for arg in command:
        if out and out[-1] == "--set":
            path, value = parse_override(arg)
            key = ".".join(path)
            if is_secret(key):
                arg = f"{key}=***"
            elif isinstance(value, dict):
                arg = f"{key}={json.dumps(redact(value))}"
        out.append(arg)
    return shlex.join(out)


def build_runtime_env(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    runtime_env: dict[str, Any] = {"working_dir": args.working_dir, "excludes": EXCLUDES}
    if args.pip:
        runtime_env["pip"] = list(args.pip)
    if env:
        runtime_env["env_vars"] = env
    return runtime_env


def validate(args: argparse.Namespace) -> RunConfig:
    """The config the job will load, built here so that mistakes fail before anything is uploaded."""
    from pipeline.config import RunConfig, load_config

    if not args.input or not args.output:
        raise UsageError("both --input and --output are required (URIs the cluster can read, e.g. s3://...)")
    if not (Path(args.working_dir) / "jobs" / "run.py").is_file():
        raise UsageError(f"--working-dir {args.working_dir!r} holds no jobs/run.py: give the repository's folder "
                          f"(installed without -e, posepipe cannot find it by itself)")
    config = load_config(RunConfig, args.config, list(args.overrides) + [f"input={args.input}",
                                                                          f"output={args.output}"])
    for uri in (config.input, config.output):
        if "://" not in uri or uri.startswith("file://"):
            logger.warning("%s is a local path: every node of the cluster must see it (a shared filesystem)", uri)
    from pipeline.models.blazepose.weights import MODEL_NAMES

    if config.model.checkpoint in MODEL_NAMES:
        logger.info("model.checkpoint %s resolves in each node's model cache: the cluster's image imports it "
                    "(infra/Dockerfile); elsewhere run `posepipe models fetch --out s3://BUCKET/models` and set "
                    "model.checkpoint=s3://BUCKET/models/%s.pt", config.model.checkpoint, config.model.checkpoint)
    secrets = [k for k in config.storage_options if is_secret(k)]
    if secrets:
        logger.warning("storage_options %s travel in the job's entrypoint, readable in the Ray dashboard; prefer "
                       "the nodes' own credentials (instance role, IRSA)", secrets)
    return config


async def stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def wait_for_end(client, job_id: str, poll_s: float = 1.0):
    """The job's final JobDetails (the log stream can close a moment before the status turns terminal)."""
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def exit_code(info) -> int:
    if info.status == "SUCCEEDED":
        return 0
    if info.status == "FAILED" and info.driver_exit_code:
        return int(info.driver_exit_code)   # the job's own: 3 partial, 2 bad config or input, 1 failed
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from pipeline.config import ConfigError

    try:
        validate(args)
        env = parse_env(args.env)
        command = build_entrypoint(args)
        headers = auth_headers()
    except (ConfigError, UsageError) as exc:
        return fail(exc)
    for key in env:
        logger.info("job env %s=%s", key, "***" if is_secret(key) else env[key])
        if is_secret(key):
            logger.warning("env %s is stored with the job and readable in the Ray dashboard; prefer the nodes' "
                           "own credentials (instance role, IRSA)", key)
    try:
        client = JobSubmissionClient(args.address, headers=headers)
    except AuthenticationError as exc:
        problem = "refused the token given" if headers else "requires a token (token authentication), none found"
        return fail(f"the Ray cluster at {args.address} {problem}: {AUTH_HELP} ({exc.message})")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return fail(f"cannot reach the Ray Jobs API at {args.address}: {exc}; start the cluster or give "
                    f"--address http://HEAD:8265 (or set RAY_ADDRESS)", EXIT_FAILED)
    logger.info("submitting to %s: %s", args.address, shown(command))
    try:
        job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=build_runtime_env(args, env),
                                   submission_id=args.submission_id, metadata={"posepipe": "run"})
    except RuntimeError as exc:  # e.g. a submission id already used, a working_dir over Ray's upload limit
        return fail(f"the cluster refused the job: {exc}", EXIT_FAILED)
    logger.info("submitted job %s", job_id)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nposepipe: stopped following; job {job_id} keeps running "
              f"(stop it with `ray job stop --address {args.address} {job_id}`)", file=sys.stderr)
        return 130
    info = wait_for_end(client, job_id)
    logger.info("job %s %s%s", job_id, info.status, f": {info.message}" if info.message else "")
    return exit_code(info)


if __name__ == "__main__":
    sys.exit(main())
