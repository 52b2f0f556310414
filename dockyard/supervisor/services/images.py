"""containerd.services.images.v1.Images: image records (name -> target descriptor) per namespace.

Over the image library's ``ImageStore``, with containerd's rules
(``metadata/images.go``): a name is required; the target needs a valid
digest, a size above zero and a media type; ``Update`` with no field paths
replaces the record, else sets ``labels``, ``labels.<key>``, ``target``,
``annotations`` or ``annotations.<key>`` (the target's). ``Delete`` with
``sync`` returns only after a garbage collection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api import topics
from dockyard.api.convert import descriptor_from_proto, image_to_proto
from dockyard.api.events import image_pb2 as events
from dockyard.api.services.images.v1 import images_pb2 as pb
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.api.types import descriptor_pb2
from dockyard.errors import InvalidArgument
from dockyard.fieldpaths import update_labels
from dockyard.filters import Getter, map_field, matcher
from dockyard.image.images import Image
from dockyard.spec.image import Descriptor, parse_digest
from dockyard.supervisor.grpcutil import namespace, rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def descriptor(d: descriptor_pb2.Descriptor, what: str) -> Descriptor:
    """A target descriptor from the wire, checked as containerd checks one."""
    parse_digest(d.digest, f"{what}: target digest")
    if d.size <= 0:
        raise InvalidArgument(f"{what}: target size must be greater than zero")
    if not d.media_type:
        raise InvalidArgument(f"{what}: target media type must be set")
    return descriptor_from_proto(d)


def _getter(image: Image) -> Getter:
    # containerd's image filter fields
    def get(path: list[str]) -> str | None:
        if path == ["name"]:
            return image.name or None
        if path == ["target", "digest"]:
            return image.target.digest or None
        if path == ["target", "mediatype"]:
            return image.target.media_type or None
        if path[:1] == ["labels"]:
            return map_field(image.labels, path[1:])
        if path[:1] == ["annotations"]:
            return map_field(image.target.annotations, path[1:])
        return None

    return get


def _what(name: str) -> str:
    if not name:
        raise InvalidArgument("image name must not be empty")
    return f"image {name!r}"


class ImagesService(images_pb2_grpc.ImagesServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.images = sup.images

    @rpc
    def Get(
        self, request: pb.GetImageRequest, context: grpc.ServicerContext
    ) -> pb.GetImageResponse:
        ns = namespace(context)
        _what(request.name)
        return pb.GetImageResponse(image=image_to_proto(self.images.get(ns, request.name)))

    @rpc
    def List(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        ns = namespace(context)
        match = matcher(request.filters)
        return pb.ListImagesResponse(
            images=[image_to_proto(i) for i in self.images.list(ns) if match(_getter(i))]
        )

    @rpc
    def Create(
        self, request: pb.CreateImageRequest, context: grpc.ServicerContext
    ) -> pb.CreateImageResponse:
        ns = namespace(context)
        m = request.image
        what = _what(m.name)
        image = Image(m.name, descriptor(m.target, what), update_labels({}, m.labels, [], what))
        self.sup.metadata.ensure_namespace(ns)
        created = self.images.create(ns, image)
        self.sup.events.publish(
            ns, topics.IMAGE_CREATE, events.ImageCreate(name=created.name, labels=created.labels)
        )
        return pb.CreateImageResponse(image=image_to_proto(created))

    @rpc
    def Update(
        self, request: pb.UpdateImageRequest, context: grpc.ServicerContext
    ) -> pb.UpdateImageResponse:
        ns = namespace(context)
        m = request.image
        what = _what(m.name)
        paths = list(request.update_mask.paths) or ["target", "labels"]
        # the store applies the mask in the transaction of its write; a target
        # is checked only when the mask takes it (else only its annotations count)
        if "target" in paths:
            target = descriptor(m.target, what)
        else:
            target = Descriptor("", "", 0, annotations=dict(m.target.annotations))
        updated = self.images.update(ns, Image(m.name, target, dict(m.labels)), paths)
        self.sup.events.publish(
            ns, topics.IMAGE_UPDATE, events.ImageUpdate(name=updated.name, labels=updated.labels)
        )
        return pb.UpdateImageResponse(image=image_to_proto(updated))

    @rpc
    def Delete(
        self, request: pb.DeleteImageRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        _what(request.name)
        self.images.delete(ns, request.name)
        self.sup.events.publish(ns, topics.IMAGE_DELETE, events.ImageDelete(name=request.name))
        if request.sync:
            self.sup.gc.collect()
        else:
            self.sup.gc.schedule()
        return empty_pb2.Empty()


def register(server: grpc.Server, sup: Supervisor) -> None:
    images_pb2_grpc.add_ImagesServicer_to_server(ImagesService(sup), server)
    sup.metadata.in_use_checks.append(lambda ns: ["images"] if sup.images.list(ns) else [])
    sup.add_plugin("io.containerd.gc.v1", "scheduler")
    sup.add_plugin("io.containerd.grpc.v1", "images")
