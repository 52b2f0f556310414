"""containerd.services.images.v1: image records, name -> target descriptor.

Records are ``dockyard.image.images.Image``, the same type the image library
uses: a name, the target descriptor (an index or a manifest), labels and
times.
"""

from __future__ import annotations

from collections.abc import Iterable

from dockyard.api.convert import image_from_proto, image_to_proto
from dockyard.api.services.images.v1 import images_pb2 as pb
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.client.rpc import Connection
from dockyard.client.wire import field_mask
from dockyard.image.images import Image


class ImagesService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(images_pb2_grpc.ImagesStub)

    def get(self, name: str) -> Image:
        return image_from_proto(
            self._conn.call(self._stub.Get, pb.GetImageRequest(name=name)).image
        )

    def list(self, *filters: str) -> list[Image]:
        """Images matching any filter (``name==...``, ``labels."k"==v``), or all."""
        resp = self._conn.call(self._stub.List, pb.ListImagesRequest(filters=list(filters)))
        return [image_from_proto(i) for i in resp.images]

    def create(self, image: Image) -> Image:
        req = pb.CreateImageRequest(image=image_to_proto(image))
        return image_from_proto(self._conn.call(self._stub.Create, req).image)

    def update(self, image: Image, fields: Iterable[str] = ()) -> Image:
        """Replace the record (or only ``fields``: ``target``, ``labels``, ``labels.<k>``)."""
        req = pb.UpdateImageRequest(image=image_to_proto(image), update_mask=field_mask(fields))
        return image_from_proto(self._conn.call(self._stub.Update, req).image)

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete the record; with ``sync``, what only it kept is collected before the answer."""
        self._conn.call(self._stub.Delete, pb.DeleteImageRequest(name=name, sync=sync))
