"""Events from the shim to containerd (or the supervisor), as runc's shim sends them.

Each event is wrapped in an ``Envelope`` (timestamp, namespace, topic, the
event in an Any under containerd's type URL) and forwarded with
``containerd.services.events.ttrpc.v1.Events/Forward`` on the ttrpc address
the shim got in ``TTRPC_ADDRESS``. Publishing only queues: one thread sends,
in order, reconnecting when the connection broke and retrying a failed
event a few times with a growing pause before dropping it, so no task
operation ever waits for the events service.
"""

from __future__ import annotations

import collections
import threading
import time

from dockyard.shim import log
from dockyard.shim import messages as m

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from dockyard.shim.codec import Message
    from dockyard.ttrpc import Client

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_TIMEOUT = 5.0
MAX_ATTEMPTS = 6
QUEUE_LIMIT = 2048


class Publisher:
    """Forwards events from a queue; ``publish`` never blocks on the network."""

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        connect: Callable[[str], Client] | None = None,
        retry_pause: float = 1.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self._connect = connect
        self._retry_pause = retry_pause
        self._client: Client | None = None
        self._queue: collections.deque[m.Envelope] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` (a containerd.events message) under ``topic``."""
        envelope = m.Envelope(
            timestamp=m.Timestamp.from_ns(time.time_ns()),
            namespace=self.namespace,
            topic=topic,
            event=m.pack(event),
        )
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= QUEUE_LIMIT:
                dropped = self._queue.popleft()
                log.error(f"event queue full: dropped {dropped.topic}")
            self._queue.append(envelope)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued (within ``timeout``), then stop; True if all went."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if self._client is not None:
            self._client.close()
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                envelope = self._queue[0]
            self._send(envelope)
            with self._cond:
                self._queue.popleft()

    def _send(self, envelope: m.Envelope) -> None:
        if not self.address:
            return  # nobody to tell (a shim run by hand)
        request = m.ForwardRequest(envelope=envelope)
        topic = envelope.topic
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                self._forward(request)
                return
            except Exception as e:
                log.error(f"forward event {topic} (attempt {attempt}): {e}")
                if self._client is not None:
                    self._client.close()
                    self._client = None
                if attempt == MAX_ATTEMPTS:
                    break
                with self._cond:
                    # While closing, retry quickly: close() has a time limit.
                    pause = 0.05 if self._closing else self._retry_pause * attempt
                    self._cond.wait(pause)
        log.error(f"dropped event {topic} after {MAX_ATTEMPTS} attempts")

    def _forward(self, request: m.ForwardRequest) -> None:
        if self._client is None or self._client.closed:
            if self._connect is not None:
                self._client = self._connect(self.address)
            else:
                from dockyard.ttrpc import Client

                self._client = Client(self.address)
        self._client.call_typed(
            EVENTS_SERVICE, "Forward", request, m.Empty, timeout=FORWARD_TIMEOUT
        )
