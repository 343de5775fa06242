"""A local S3-compatible server for development: moto on 127.0.0.1, in memory, gone when stopped (Ctrl-C or SIGTERM).

    python infra/dev/s3_server.py --port 9000 --bucket posepipe --upload sample=videos

creates the bucket, optionally copies a local folder into it (LOCAL=PREFIX), and prints the environment that points
posepipe (s3fs), boto3 and the AWS CLI at it. Any AWS client works against it; the dummy credentials are moto's.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

DEV_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any
                   "AWS_DEFAULT_REGION": "us-east-1"}


def upload_folder(client, bucket: str, local: Path, prefix: str) -> int:
    """Copy every file under `local` to s3://bucket/prefix/<relative path>; returns the count."""
    if not local.is_dir():
        raise SystemExit(f"--upload {local}: not a folder (expected LOCAL_FOLDER=PREFIX)")
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    for path in files:
        client.upload_file(str(path), bucket, f"{prefix.strip('/')}/{path.relative_to(local).as_posix()}".lstrip("/"))
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default 9000)")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable; default posepipe)")
    parser.add_argument("--upload", action="append", default=[], metavar="LOCAL=PREFIX",
                        help="copy a local folder into the first bucket under PREFIX (repeatable)")
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port)
    server.start()
    endpoint = f"http://127.0.0.1:{args.port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=DEV_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=DEV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          region_name=DEV_CREDENTIALS["AWS_DEFAULT_REGION"])  # never this shell's own keys
    buckets = args.bucket or ["posepipe"]
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    for item in args.upload:
        local, _, prefix = item.partition("=")
        count = upload_folder(client, buckets[0], Path(local), prefix)
        print(f"uploaded {count} files from {local} to s3://{buckets[0]}/{prefix.strip('/')}")
    print(f"S3 at {endpoint}, buckets: {', '.join(buckets)}. In another shell:\n")
    print(f"export AWS_ENDPOINT_URL={endpoint}")
    for key, value in DEV_CREDENTIALS.items():
        print(f"export {key}={value}")
    print(f"posepipe run --input s3://{buckets[0]}/videos --output s3://{buckets[0]}/poses\n\nCtrl-C stops it.")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
