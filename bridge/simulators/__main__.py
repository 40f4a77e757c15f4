"""Run a simulated hospital EHR or municipal care system on loopback.

    python -m bridge.simulators hospital --port 8101 --bridge http://127.0.0.1:8080 \\
        --token example-hospital-token-not-for-production --send 5 --interval 2
    python -m bridge.simulators municipality --port 8102 --speaks fhir \\
        --bridge http://127.0.0.1:8080 --token example-herlev-token-not-for-production --reply

Both receive what the bridge delivers (see :mod:`bridge.simulators.peer`). The hospital can send
admissions and discharges; a municipality with ``--reply`` answers each admission it receives with a
correspondence to the hospital and, with ``--records``, a care record the bridge routes to the hospital
where the citizen is admitted. The process stops on SIGINT/SIGTERM, or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
from types import FrameType

from bridge.municipal.events import HospitalStayEvent, Party
from bridge.simulators import traffic
from bridge.simulators.client import BridgeClient
from bridge.simulators.peer import Inbox, Peer, PeerServer, Received


def _say(role: str, text: str) -> None:
    sys.stdout.write(f"[{role}] {text}\n")
    sys.stdout.flush()


def _party(args: argparse.Namespace, default: Party) -> Party:
    if args.sor is None and args.gln is None:
        return default
    return Party(name=args.name or default.name, sor=args.sor, gln=args.gln)


def _receivers(args: argparse.Namespace, default: Party) -> list[Party]:
    found = []
    for text in args.to:
        sor, _, gln = str(text).partition("/")
        found.append(Party(sor=sor or None, gln=gln or None))
    return found or [default]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bridge.simulators", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("hospital", "municipality"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="port to receive deliveries on")
    parser.add_argument("--bridge", help="base URL of the bridge, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", help="bearer token this system presents to the bridge")
    parser.add_argument("--speaks", choices=("fhir", "municipal-v1"), default="fhir")
    parser.add_argument("--name", help="organisation name (with --sor/--gln)")
    parser.add_argument("--sor", help="this system's SOR id (default: MedCom's test organisation)")
    parser.add_argument("--gln", help="this system's GLN")
    parser.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="SOR[/GLN]",
        help="an organisation this system sends to (repeatable; the hospital takes turns)",
    )
    parser.add_argument("--send", type=int, default=0, help="hospital: admit and discharge N citizens")
    parser.add_argument("--first-citizen", type=int, default=0, help="number of the first synthetic citizen")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sends")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before sending")
    parser.add_argument("--reply", action="store_true", help="municipality: answer admissions")
    parser.add_argument("--records", action="store_true", help="municipality: also send a care record")
    parser.add_argument("--no-validate", action="store_true", help="do not validate received messages")
    parser.add_argument("--lifetime", type=float, default=0.0, help="stop after this many seconds (0: never)")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return parser


def _hospital_loop(args: argparse.Namespace, client: BridgeClient, stop: threading.Event) -> None:
    me = _party(args, traffic.HOSPITAL_UNIT)
    receivers = _receivers(args, traffic.HERLEV_MUNICIPALITY)
    if stop.wait(args.start_delay):
        return
    admitted: list[tuple[HospitalStayEvent, str]] = []

    def discharge_oldest() -> None:
        event, hid = admitted.pop(0)
        message = traffic.notification(traffic.discharge(event, hid))
        status = client.post_fhir(message)
        _say("hospital", f"sent discharge (SLHJ) {traffic.header_id(message)[:8]}: HTTP {status}")

    # Two citizens stay admitted at a time: each admission is followed later by its discharge.
    for i in range(args.send):
        n = args.first_citizen + i
        event = traffic.admission(n, hospital=me, municipality=receivers[i % len(receivers)])
        message = traffic.notification(event)
        status = client.post_fhir(message)
        _say(
            "hospital",
            f"sent admission (STIN) {traffic.header_id(message)[:8]} of citizen #{n}: HTTP {status}",
        )
        admitted.append((event, traffic.header_id(message)))
        if stop.wait(args.interval):
            return
        if len(admitted) > 2:
            discharge_oldest()
            if stop.wait(args.interval):
                return
    while admitted and not stop.is_set():
        discharge_oldest()
        stop.wait(args.interval)


def _municipality_loop(
    args: argparse.Namespace, client: BridgeClient, work: queue.Queue[Received], stop: threading.Event
) -> None:
    me = _party(args, traffic.HERLEV_MUNICIPALITY if args.speaks == "fhir" else traffic.REHAB_MUNICIPALITY)
    hospital = _receivers(args, traffic.HOSPITAL_UNIT)[0]
    while not stop.is_set():
        try:
            received = work.get(timeout=0.2)
        except queue.Empty:
            continue
        if received.citizen is None:
            continue
        corr = traffic.correspondence(received.citizen, sender=me, receiver=hospital)
        if args.speaks == "fhir":
            message = traffic.care_communication(corr)
            status = client.post_fhir(message)
            _say("municipality", f"sent CareCommunication {traffic.header_id(message)[:8]}: HTTP {status}")
        else:
            status = client.post_json(
                "/municipal/correspondence", corr.model_dump(mode="json", exclude_none=True)
            )
            _say("municipality", f"sent correspondence: HTTP {status}")
        if args.records:
            record = traffic.municipal_record(received.citizen, municipality=me)
            status = client.post_json("/municipal/records", record)
            _say("municipality", f"sent care record (routed to the admitting hospital): HTTP {status}")


def _is_admission(received: Received) -> bool:
    return received.code == "STIN" or (received.kind == "hospital-stay-event-v1" and received.code == "STIN")


def main(argv: list[str] | None = None) -> int:
    """Run one simulated peer until interrupted."""
    args = _parser().parse_args(argv)
    role: str = args.role
    stop = threading.Event()
    work: queue.Queue[Received] = queue.Queue()

    def on_message(received: Received) -> None:
        code = f" {received.code}" if received.code else ""
        flag = "" if received.valid else " - INVALID: " + "; ".join(received.problems[:2])
        _say(role, f"received {received.kind}{code} {received.header_id[:8]}{flag}")
        if role == "municipality" and args.reply and _is_admission(received):
            work.put(received)

    server = PeerServer(
        Peer(Inbox(validate=not args.no_validate), on_message), args.host, args.port, quiet=not args.verbose
    ).start()
    _say(role, f"listening on http://{args.host}:{server.port}")

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    workers: list[threading.Thread] = []
    client = BridgeClient(args.bridge, args.token) if args.bridge else None
    if client is not None and role == "hospital" and args.send:
        workers.append(threading.Thread(target=_hospital_loop, args=(args, client, stop), daemon=True))
    if client is not None and role == "municipality" and args.reply:
        workers.append(
            threading.Thread(target=_municipality_loop, args=(args, client, work, stop), daemon=True)
        )
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + args.lifetime if args.lifetime > 0 else None
    while not stop.wait(0.2):
        if deadline is not None and time.monotonic() > deadline:
            break
    stop.set()
    for worker in workers:
        worker.join(timeout=5)
    if client is not None:
        client.close()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
