"""Where the gateway keeps images and async tasks: bytes in an :class:`~.blobs.ImageBlobs` store (files
under ``DATA/images`` by default, or an S3-compatible bucket), their index and the tasks in a task store
(:mod:`.records`: ``DATA/gateway.sqlite3`` by default, or PostgreSQL shared by replicas).

The bytes are stored whole first, then the row is inserted: an image is listed only once it is
complete, so a crash leaves at worst an orphan object, never a half image behind a UUID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from triton_inpaint.gateway.store.blobs import ImageBlobs, LocalBlobs, S3Blobs, S3Settings
from triton_inpaint.gateway.store.records import SqliteTaskStore, SqlTaskStore

IMAGE_EXTENSIONS = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class StoredImage:
    uuid: str
    ext: str
    data: bytes

    @property
    def media_type(self) -> str:
        return IMAGE_EXTENSIONS[self.ext]


class GatewayStorage:
    """Image bytes in ``blobs``, their index and the async tasks in ``tasks``."""

    def __init__(self, tasks: SqlTaskStore, blobs: ImageBlobs) -> None:
        self.tasks = tasks
        self.blobs = blobs

    def put_image(self, data: bytes, ext: str) -> str:
        if ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"unknown image extension {ext!r}")
        image_uuid = str(uuid.uuid4())
        name = f"{image_uuid}.{ext}"
        self.blobs.write(name, data, IMAGE_EXTENSIONS[ext])
        try:
            self.tasks.add_image(image_uuid, ext, len(data))
        except BaseException:  # a failed insert: the stored bytes go too
            self.blobs.delete(name)
            raise
        return image_uuid

    def delete_image(self, image_uuid: str) -> None:
        """Forget an image (row first, so it is never listed without its bytes); absent is fine."""
        ext = self.tasks.remove_image(image_uuid)
        if ext is not None:
            self.blobs.delete(f"{image_uuid}.{ext}")

    def get_image(self, image_uuid: str) -> StoredImage | None:
        ext = self.tasks.image_extension(image_uuid)
        if ext is None:
            return None
        data = self.blobs.read(f"{image_uuid}.{ext}")
        return None if data is None else StoredImage(image_uuid, ext, data)

    def image_link(self, image_uuid: str) -> tuple[str, str | None] | None:
        ext = self.tasks.image_extension(image_uuid)
        return None if ext is None else (ext, self.blobs.link(f"{image_uuid}.{ext}"))

    def check(self) -> None:
        self.blobs.check()
        self.tasks.check()


class LocalStorage(GatewayStorage):
    """The embedded default: ``ROOT/gateway.sqlite3`` and, unless ``blobs`` says otherwise, image
    files under ``ROOT/images``."""

    def __init__(self, root: Path, blobs: ImageBlobs | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(
            SqliteTaskStore(root / "gateway.sqlite3"),
            blobs if blobs is not None else LocalBlobs(root / "images"),
        )


def open_storage(
    data_dir: Path, s3: S3Settings | None = None, database_url: str | None = None
) -> GatewayStorage:
    """The storage a gateway's options describe: image bytes in the bucket ``s3`` or under
    ``DATA/images``; tasks and the image index in PostgreSQL at ``database_url`` or in
    ``DATA/gateway.sqlite3``."""
    blobs = S3Blobs(s3) if s3 is not None else LocalBlobs(data_dir / "images")
    if database_url is None:
        return LocalStorage(data_dir, blobs)
    from triton_inpaint.gateway.store.postgres import (
        PostgresTaskStore,  # psycopg is only needed by a shared store
    )

    return GatewayStorage(PostgresTaskStore(database_url), blobs)
