"""The dump store in S3: `archive` uploads a run dir's segments, `replay`/`verify --from` read them back.

Layout under s3://BUCKET/PREFIX:
    segments/<segment name>.<sha256 hex>   one object per segment, named by its name and content checksum,
                                           so a rerun finds what is already there and never writes a copy
    manifest.json                          written last, once every segment is verified in S3: the segment
                                           names in replay order, each object's key, size and SHA-256, what
                                           the dump held (keys, finished, struct) and a checksum of itself

Objects are encrypted at rest (SSE-KMS with --kms-key, else SSE-S3) and carry no tags or metadata: a
segment's name and checksum are all an object name says. A put is atomic, and a multipart upload left
behind by a killed run is aborted by the next one, so no half-written object is ever visible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import botocore.exceptions as bex

from ..datapath.segments import Segment, parse_segment
from ..datapath.store import list_segments
from ..errors import BadInput, GateRefused
from ..rundir import DumpLedger, RunDir
from .aws import Clients, aws_errors, error_code

FORMAT = "redis-migrate-archive/1"
MANIFEST = "manifest.json"
MULTIPART_THRESHOLD = 64 * 1024 * 1024   # larger segments go up in parts
PART_SIZE = 16 * 1024 * 1024             # S3's minimum is 5 MiB (except the last part)
READ_CHUNK = 1024 * 1024
UPLOADERS = 4                            # segments in flight at once (each read whole: at most ~16 MB)
_PUBLIC_BLOCK = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise BadInput(f"{uri!r} is not an s3://BUCKET/PREFIX URI", "e.g. s3://my-bucket/redis-archive/prod")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(name)}" if name else f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# --- the bucket gate -------------------------------------------------------------------------------

def public_access_problem(s3, bucket: str) -> str | None:
    """Why the bucket may allow public access (None when all four public access blocks are on)."""
    with aws_errors(f"S3 bucket {bucket}"):
        try:
            config = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        except bex.ClientError as exc:
            if error_code(exc) != "NoSuchPublicAccessBlockConfiguration":
                raise
            return "it has no public access block"
    off = [name for name in _PUBLIC_BLOCK if not config.get(name)]
    return f"its public access block has {', '.join(off)} off" if off else None


def refuse_public(s3, bucket: str, force: bool) -> None:
    problem = public_access_problem(s3, bucket)
    if problem and not force:
        raise GateRefused(f"S3 bucket {bucket} may allow public access: {problem}",
                          "turn on all four settings (aws s3api put-public-access-block --bucket BUCKET "
                          "--public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,"
                          "BlockPublicPolicy=true,RestrictPublicBuckets=true), or pass --force")


# --- upload ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalFile:
    """One segment to archive: its name, size, SHA-256 and the S3 key it goes to."""

    name: str
    path: object
    size: int
    sha256: str            # hex
    part_digests: tuple    # SHA-256 of each part, for a multipart upload's composite checksum
    key: str

    @property
    def multipart(self) -> bool:
        return len(self.part_digests) > 1

    def s3_checksum(self) -> str:
        """What S3 reports as ChecksumSHA256: the content's, or for parts the checksum of the parts' checksums."""
        if not self.multipart:
            return b64(bytes.fromhex(self.sha256))
        return b64(hashlib.sha256(b"".join(self.part_digests)).digest())


def _hash_file(path, size: int) -> tuple[str, tuple]:
    whole = hashlib.sha256()
    parts = []
    multipart = size > MULTIPART_THRESHOLD
    with open(path, "rb") as handle:
        while chunk := handle.read(PART_SIZE):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
    return whole.hexdigest(), tuple(parts) if multipart else ()


def local_files(run_dir: RunDir, where: S3Location) -> list[LocalFile]:
    files = []
    for path in list_segments(run_dir):
        size = path.stat().st_size
        sha, parts = _hash_file(path, size)
        files.append(LocalFile(path.name, path, size, sha, parts, where.key(f"segments/{path.name}.{sha}")))
    return files


def _encryption(kms_key: str | None) -> dict:
    if kms_key:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
    return {"ServerSideEncryption": "AES256"}


def _in_s3(s3, bucket: str, item: LocalFile) -> bool:
    """Whether the object exists with this size and checksum (S3's SHA-256 when it reports one, else read back)."""
    try:
        head = s3.head_object(Bucket=bucket, Key=item.key, ChecksumMode="ENABLED")
    except bex.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    if head["ContentLength"] != item.size:
        return False
    reported = head.get("ChecksumSHA256")
    if reported:  # a multipart object's carries "-<parts>"
        return reported.split("-")[0] == item.s3_checksum()
    return _read_back(s3, bucket, item.key)[0] == item.sha256


def _read_back(s3, bucket: str, key: str) -> tuple[str, int]:
    """The object's SHA-256 and size, streamed (the manifest's own checksum, where S3 reports none)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    while chunk := body.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _put(s3, bucket: str, item: LocalFile, encryption: dict) -> None:
    if item.multipart:
        _put_parts(s3, bucket, item, encryption)
        return
    with open(item.path, "rb") as handle:
        s3.put_object(Bucket=bucket, Key=item.key, Body=handle.read(), ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=item.s3_checksum(), **encryption)


def _put_parts(s3, bucket: str, item: LocalFile, encryption: dict) -> None:
    """A multipart upload, part by part (one part in memory); the object appears only on completion."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=item.key, ChecksumAlgorithm="SHA256", **encryption)
    parts = []
    try:
        with open(item.path, "rb") as handle:
            for number, digest in enumerate(item.part_digests, 1):
                reply = s3.upload_part(Bucket=bucket, Key=item.key, UploadId=upload["UploadId"], PartNumber=number,
                                       Body=handle.read(PART_SIZE), ChecksumAlgorithm="SHA256",
                                       ChecksumSHA256=b64(digest))
                parts.append({"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": b64(digest)})
        s3.complete_multipart_upload(Bucket=bucket, Key=item.key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=item.key, UploadId=upload["UploadId"])
        raise


def _abort_leftovers(s3, where: S3Location) -> int:
    """Abort multipart uploads a killed run left under the prefix: they are invisible, but billed."""
    reply = s3.list_multipart_uploads(Bucket=where.bucket, Prefix=where.key("segments/"))
    uploads = reply.get("Uploads", [])
    for upload in uploads:
        s3.abort_multipart_upload(Bucket=where.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(uploads)


def _manifest(run_dir: RunDir, files: list[LocalFile]) -> bytes:
    ledger = DumpLedger.load(run_dir)
    totals = ledger.totals()
    body = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "keys": totals.dumped + totals.struct_keys, "dump_finished": bool(ledger.finished_at),
            "struct_all": ledger.struct_all,
            "segments": [{"name": f.name, "key": f.key, "size": f.size, "sha256": f.sha256} for f in files]}
    body["sha256"] = _self_checksum(body)
    return json.dumps(body, indent=1).encode()


def _self_checksum(body: dict) -> str:
    content = {k: v for k, v in body.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _archive_one(s3, where: S3Location, item: LocalFile, encryption: dict) -> bool:
    """Upload one segment unless S3 already holds it whole; verify it from S3. Whether it was uploaded."""
    if _in_s3(s3, where.bucket, item):
        return False
    _put(s3, where.bucket, item, encryption)
    if not _in_s3(s3, where.bucket, item):
        raise BadInput(f"s3://{where.bucket}/{item.key} does not match the segment after upload",
                       "rerun the same command: it uploads that segment again")
    return True


def archive(run_dir: RunDir, uri: str, clients: Clients, *, kms_key: str | None = None, force: bool = False,
            progress: Callable[[int], None] = lambda n: None) -> dict:
    """Upload what is missing, verify every object from S3, then write the manifest. Rerun to resume."""
    where = S3Location.parse(uri)
    if not where.prefix:
        raise BadInput(f"{uri} has no prefix", "archive under a prefix, e.g. s3://BUCKET/redis-archive/ENV")
    if not DumpLedger.load(run_dir).found or not list_segments(run_dir):
        raise BadInput(f"run directory {run_dir.path} holds no dump", "run `redis-migrate dump` (or `run`) first")
    started = time.monotonic()
    s3 = clients.s3
    encryption = _encryption(kms_key)
    with aws_errors(f"S3 archive {where.uri()}"):
        refuse_public(s3, where.bucket, force)
        aborted = _abort_leftovers(s3, where)
        files = local_files(run_dir, where)
        uploaded = 0
        with ThreadPoolExecutor(max_workers=UPLOADERS, thread_name_prefix="s3-upload") as pool:
            for sent in pool.map(lambda item: _archive_one(s3, where, item, encryption), files):
                uploaded += sent
                progress(1)
        manifest = _manifest(run_dir, files)
        s3.put_object(Bucket=where.bucket, Key=where.key(MANIFEST), Body=manifest, ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=b64(hashlib.sha256(manifest).digest()), ContentType="application/json",
                      **encryption)
    return {"archive": where.uri(), "manifest": where.uri(MANIFEST), "objects": len(files) + 1,
            "segments": len(files), "uploaded": uploaded, "already_there": len(files) - uploaded,
            "bytes": sum(f.size for f in files) + len(manifest), "aborted_uploads": aborted,
            "encryption": "SSE-KMS" if kms_key else "SSE-S3",
            "dump_finished": bool(DumpLedger.load(run_dir).finished_at),
            "seconds": round(time.monotonic() - started, 3)}


# --- reading an archive back -----------------------------------------------------------------------

class ArchiveSegments:
    """An archive as replay's and verify's segment source: one segment in memory at a time, its SHA-256
    checked against the manifest (then its own checksum) before anything of it is used."""

    def __init__(self, uri: str, clients: Clients) -> None:
        self.where = S3Location.parse(uri)
        self.uri = self.where.uri()
        self.s3 = clients.s3
        manifest = self._manifest()
        self.entries = {entry["name"]: entry for entry in manifest["segments"]}
        self.order = [entry["name"] for entry in manifest["segments"]]
        self.expected_keys = int(manifest.get("keys") or 0)
        self.dump_finished = bool(manifest.get("dump_finished"))
        self.struct_all = bool(manifest.get("struct_all"))
        # what a replay's progress refers to: the segments, not the manifest (a rerun of archive rewrites its date)
        self.content_sha256 = hashlib.sha256(json.dumps(manifest["segments"], sort_keys=True).encode()).hexdigest()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-prefetch")
        self._ahead: dict[str, Future] = {}

    @property
    def label(self) -> str:
        return self.uri

    def _manifest(self) -> dict:
        name = self.where.uri(MANIFEST)
        data = self._get(self.where.key(MANIFEST), name)
        try:
            manifest = json.loads(data)
            ok = manifest.get("format") == FORMAT and manifest.get("sha256") == _self_checksum(manifest)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise BadInput(f"archive manifest {name} is corrupt or not a redis-migrate archive manifest",
                           "check the URI; rerun `redis-migrate archive` from the run dir if it still exists")
        return manifest

    def _get(self, key: str, name: str) -> bytes:
        with aws_errors(f"S3 object {name}"):
            try:
                body = self.s3.get_object(Bucket=self.where.bucket, Key=key)["Body"]
                return b"".join(iter(lambda: body.read(READ_CHUNK), b""))
            except bex.ClientError as exc:
                if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                    raise
        raise BadInput(f"archive object {name} is missing",
                       "check the URI; if the run dir still exists, rerun `redis-migrate archive` to upload it again")

    def names(self) -> list[str]:
        return list(self.order)

    def object_uri(self, name: str) -> str:
        return f"s3://{self.where.bucket}/{self.entries[name]['key']}"

    def load(self, name: str) -> Segment:
        """The segment, checked; the next one in order is fetched meanwhile (two segments in memory at most)."""
        fetched = self._ahead.pop(name, None)
        self._ahead.clear()  # a fetch ahead of another name (verify reads out of order): dropped
        data = fetched.result() if fetched is not None else self._fetch(name)
        position = self.order.index(name) + 1
        if position < len(self.order):
            upcoming = self.order[position]
            self._ahead[upcoming] = self._pool.submit(self._fetch, upcoming)
        return self._checked(name, data)

    def _fetch(self, name: str) -> bytes:
        return self._get(self.entries[name]["key"], self.object_uri(name))

    def _checked(self, name: str, data: bytes) -> Segment:
        entry = self.entries[name]
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise _corrupt_object(self.object_uri(name), "its SHA-256 or size differs from the manifest's")
        return parse_segment(data, self.object_uri(name))

    def check(self) -> list[str]:
        """Every object's size and SHA-256 against the manifest, from S3; the URIs that fail (retire-check)."""
        bad = []
        for name in self.order:
            entry = self.entries[name]
            with aws_errors(f"S3 object {self.object_uri(name)}"):
                try:
                    sha, size = _read_back(self.s3, self.where.bucket, entry["key"])
                except bex.ClientError as exc:
                    if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                        raise
                    sha, size = "", -1
            if (sha, size) != (entry["sha256"], entry["size"]):
                bad.append(self.object_uri(name))
        return bad


def _corrupt_object(uri: str, why: str) -> BadInput:
    return BadInput(f"archive object {uri} is corrupt: {why}",
                    "nothing was written from it; restore the object from a copy (or rerun `redis-migrate archive` "
                    "from the run dir if it still exists), then rerun")
