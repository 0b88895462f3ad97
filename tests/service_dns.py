"""A real DNS server (dnslib's) standing in for cluster DNS: it answers one name with the addresses in
``addresses`` (change them at any time), as cluster DNS answers a headless Service with its ready pods.
gRPC reaches it through a target that names it: ``dns://127.0.0.1:PORT/NAME:GRPC_PORT``."""

from __future__ import annotations

from triton_inpaint.server.process import free_port


class ServiceDns:
    def __init__(self, name: str, addresses: list[str]) -> None:
        from dnslib import QTYPE, RR, A
        from dnslib.server import BaseResolver, DNSLogger, DNSServer

        self.name = name.rstrip(".")
        self.addresses = list(addresses)
        dns = self

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                reply = request.reply()
                if str(request.q.qname).rstrip(".") == dns.name and QTYPE[request.q.qtype] == "A":
                    for address in list(dns.addresses):
                        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
                return reply

        self.port = free_port()
        quiet = DNSLogger("-request,-reply,-truncated,-data")
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=quiet)

    def target(self, port: int) -> str:
        """The gRPC target resolving ``name`` through this server."""
        return f"dns://127.0.0.1:{self.port}/{self.name}:{port}"

    def __enter__(self) -> ServiceDns:
        self.server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
