"""One synthetic call, in its own short-lived process: `python -m trunkguard.calls.child`.

Reads the call's settings as JSON on stdin, prints one JSON result line on stdout,
and exits. pjsua2 owns this process and its one thread (the main one: no worker
threads, null audio device); its logs go to stderr, which the agent captures and
never forwards. The agent kills the process at its deadline, so a hang or a crash of
PJSIP is a failed check, never a hung agent.

The call: INVITE to `uri` (our own INVITE timeout: a dead target would ring 32 s),
a 1 kHz tone played into the call while it lasts, the received audio recorded, then
BYE. Measured: post-dial delay (INVITE to the first 18x and to 200), RTP packets sent
and received, loss and jitter (pjmedia's stream statistics), and whether the tone came
back (Goertzel power at 1 kHz in what was received, for echoing far ends).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

TONE_HZ = 1000.0


def goertzel_share(samples: list[int], rate: int, hz: float) -> float:
    """The share of the signal's power at `hz` (0..1): near 1 for our tone echoed back."""
    if len(samples) < rate // 10:
        return 0.0
    k = round(len(samples) * hz / rate)
    w = 2 * math.pi * k / len(samples)
    coeff = 2 * math.cos(w)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    total = sum(x * x for x in samples) * len(samples) / 2
    return 0.0 if total <= 0 else min(1.0, power / total)


def tone_back(path: Path) -> float:
    try:
        with wave.open(str(path)) as w:
            rate, n = w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (OSError, EOFError, wave.Error):
        return 0.0
    samples = list(struct.unpack(f"<{len(raw) // 2}h", raw[: len(raw) // 2 * 2]))
    skip = rate // 2  # the first half second: the echo's round trip and jitter buffer
    return goertzel_share(samples[skip:], rate, TONE_HZ)


def place(spec: dict[str, Any]) -> dict[str, Any]:
    import pjsua2 as pj

    out: dict[str, Any] = {"ok": False, "reason": "not started"}
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = int(spec.get("log_level", 1))
    cfg.logConfig.consoleLevel = int(spec.get("log_level", 1))
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.userAgent = "trunkguard-call-check"
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    if spec.get("bind"):
        tcfg.boundAddress = spec["bind"]
    kind = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}[
        spec.get("transport", "udp")
    ]
    ep.transportCreate(kind, tcfg)
    ep.libStart()

    acfg = pj.AccountConfig()
    acfg.idUri = spec.get("from", "sip:trunkguard@invalid")
    acc = pj.Account()
    acc.create(acfg)

    marks: dict[str, float] = {}
    t0 = time.monotonic()
    recorded = Path(tempfile.mkdtemp(prefix="tg-call-")) / "rx.wav"

    tone = pj.ToneGenerator()
    tone.createToneGenerator()
    desc = pj.ToneDesc()
    desc.freq1, desc.freq2, desc.on_msec, desc.off_msec = int(TONE_HZ), 0, 1000, 0
    tones = pj.ToneDescVector()
    tones.append(desc)
    tone.play(tones, True)
    recorder = pj.AudioMediaRecorder()
    recorder.createRecorder(str(recorded))
    media: dict[str, Any] = {"tone": tone, "recorder": recorder}
    del tone, recorder  # only `media` holds them: cleared before the library goes

    class Call(pj.Call):  # type: ignore[misc]
        def onCallState(self, prm: Any) -> None:
            ci = self.getInfo()
            now = time.monotonic() - t0
            if ci.lastStatusCode in (180, 183) and "ringing" not in marks:
                marks["ringing"] = now
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and "answered" not in marks:
                marks["answered"] = now
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                marks["ended"] = now
                marks["code"] = ci.lastStatusCode
                out["final"] = f"{ci.lastStatusCode} {ci.lastReason}"

        def onCallMediaState(self, prm: Any) -> None:
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    am = self.getAudioMedia(i)
                    media["tone"].startTransmit(am)
                    am.startTransmit(media["recorder"])

    call = Call(acc)
    answer_within = float(spec.get("answer_within", 5.0))
    duration = float(spec.get("duration", 3.0))
    try:
        call.makeCall(spec["uri"], pj.CallOpParam(True))
    except pj.Error as e:
        out["reason"] = f"cannot call: {e.info()}"
        del call
        acc.shutdown()
        ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
        return out
    while "answered" not in marks and "ended" not in marks:
        ep.libHandleEvents(10)
        if time.monotonic() - t0 > answer_within:
            break
    if "answered" not in marks:
        out["reason"] = (
            f"rejected: {out['final']}"
            if "ended" in marks
            else f"not answered in {answer_within:g}s"
        )
        if "ended" not in marks:
            call.hangup(pj.CallOpParam(True))
            end = time.monotonic() + 1
            while "ended" not in marks and time.monotonic() < end:
                ep.libHandleEvents(10)
    else:
        until = time.monotonic() + duration
        while time.monotonic() < until and "ended" not in marks:
            ep.libHandleEvents(10)
        if "ended" in marks:
            out["reason"] = f"ended by the far end after {marks['ended']:.1f}s"
        else:
            st = call.getStreamStat(0)
            rx, tx = st.rtcp.rxStat, st.rtcp.txStat
            received = rx.pkt
            lost = rx.loss
            out |= {
                "rtp_rx": received,
                "rtp_tx": tx.pkt,
                "loss_ratio": round(lost / (received + lost), 4) if received + lost else 1.0,
                "jitter_s": round(rx.jitterUsec.mean / 1e6, 6),
            }
            call.hangup(pj.CallOpParam(True))
            end = time.monotonic() + 1
            while "ended" not in marks and time.monotonic() < end:
                ep.libHandleEvents(10)
            if received == 0:
                out["reason"] = "answered, but no RTP received"
            elif tx.pkt == 0:
                out["reason"] = "answered, but no RTP sent"
            else:
                out["ok"], out["reason"] = True, "answered with media both ways"
    out["post_dial_delay_s"] = {
        "ringing": round(marks["ringing"], 4) if "ringing" in marks else None,
        "answered": round(marks["answered"], 4) if "answered" in marks else None,
    }
    # pjsua2 objects go before the library: a Call deleted after libDestroy aborts.
    del call
    media.clear()
    acc.shutdown()
    del acc
    ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    if out.get("rtp_rx"):
        out["tone_back"] = round(tone_back(recorded), 3)
    return out


def main() -> None:
    # PJSIP prints its banner before any log setting applies: our stdout is kept for
    # the one result line, and fd 1 goes to stderr (captured by the agent).
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        spec = json.loads(sys.stdin.read() or "{}")
        result = place(spec)
    except Exception as e:  # one line for the agent, never a traceback on its stdout
        result = {"ok": False, "reason": f"call check failed: {type(e).__name__}: {e}"}
    out.write(json.dumps(result) + "\n")
    out.flush()
    os._exit(0)  # no interpreter teardown racing what is left of PJSIP


if __name__ == "__main__":
    main()
