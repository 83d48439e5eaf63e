// Drawbridge's desktop viewer: noVNC (served from the noVNC the server found,
// never part of this repository) on a desktop origin, in one of three modes:
//   desktop - the user's own desktop over /.drawbridge/websockify
//   watch   - someone's desktop, live and read-only, over /.drawbridge/watch
//   replay  - a stored recording from /.drawbridge/recording, with a time slider
import RFB from "./novnc/core/rfb.js";

const body = document.body;
const mode = body.dataset.mode;
const screen = document.getElementById("screen");
const statusLine = document.getElementById("status");

function say(text, error) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", !!error);
}

function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

// A WebSocket of our own (handed to noVNC as its channel) so that the reason
// the server closes with reaches the user.
function socket(path, onReason) {
    const ws = new WebSocket(wsUrl(path));
    ws.binaryType = "arraybuffer";
    ws.addEventListener("close", (e) => onReason(e.reason || ""));
    return ws;
}

function connectLive(path, viewOnly) {
    let reason = "";
    const ws = socket(path, (r) => { reason = r; });
    const rfb = new RFB(screen, ws, { shared: true });
    rfb.viewOnly = viewOnly;
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => {
        say(mode === "watch" ? "Watching (read-only)" : viewOnly ? "Connected (view only)" : "Connected");
    });
    rfb.addEventListener("disconnect", () => {
        // The close event runs before noVNC's disconnect: the reason is known.
        setTimeout(() => say("Closed" + (reason ? ": " + reason : ""), true), 0);
    });
    rfb.addEventListener("securityfailure", (e) => {
        say("Refused: " + (e.detail.reason || "authentication failed"), true);
    });
    rfb.addEventListener("desktopname", (e) => {
        document.getElementById("title").textContent = e.detail.name;
    });
    rfb.addEventListener("credentialsrequired", () => {
        if (mode === "watch") {
            // The desktop's own viewer answered the challenge; what a watcher sends is dropped.
            rfb.sendCredentials({ password: "-" });
            return;
        }
        const form = document.getElementById("password");
        const input = document.getElementById("password-input");
        form.hidden = false;
        say("The desktop asks for its VNC password");
        input.focus();
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            form.hidden = true;
            rfb.sendCredentials({ password: input.value });
            input.value = "";
            say("Connecting…");
        }, { once: true });
    });
    window.drawbridgeRfb = rfb;
}

// ---- replay

// The recording: "DBRFB1\n", then frames of [u32 t_ms][u32 len][len bytes], big-endian.
function parseRecording(buf) {
    const bytes = new Uint8Array(buf);
    const magic = "DBRFB1\n";
    for (let i = 0; i < magic.length; i++) {
        if (bytes[i] !== magic.charCodeAt(i)) throw new Error("not a Drawbridge desktop recording");
    }
    const view = new DataView(buf);
    const frames = [];
    let at = magic.length;
    while (at + 8 <= bytes.length) {
        const t = view.getUint32(at);
        const len = view.getUint32(at + 4);
        if (at + 8 + len > bytes.length) break;
        frames.push({ t, data: buf.slice(at + 8, at + 8 + len) });
        at += 8 + len;
    }
    return frames;
}

// A channel for noVNC that plays recorded frames: those up to `from` at once,
// the rest at their times (or paused).
class Player {
    constructor(frames, from, onTime) {
        this.binaryType = "arraybuffer";
        this.protocol = "";
        this.readyState = "connecting";
        this.onopen = null;
        this.onmessage = null;
        this.onclose = null;
        this.onerror = null;
        this.frames = frames;
        this.next = 0;
        this.from = from;
        this.onTime = onTime;
        this.timer = null;
        this.paused = false;
        this.clock = from;
        setTimeout(() => this.start(), 0);
    }
    send() {}
    close() {
        this.stop();
        this.readyState = "closed";
    }
    start() {
        this.readyState = "open";
        if (this.onopen) this.onopen({});
        while (this.next < this.frames.length && this.frames[this.next].t <= this.from) {
            this.deliver(this.frames[this.next++]);
        }
        this.onTime(this.from);
        this.resume();
    }
    deliver(f) {
        if (this.readyState === "open" && this.onmessage) this.onmessage({ data: f.data });
    }
    stop() {
        if (this.timer) clearTimeout(this.timer);
        this.timer = null;
    }
    pause() {
        this.paused = true;
        this.stop();
    }
    resume() {
        this.paused = false;
        this.startedAt = performance.now() - this.clock;
        this.tick();
    }
    tick() {
        this.stop();
        if (this.paused || this.readyState !== "open") return;
        const now = performance.now() - this.startedAt;
        while (this.next < this.frames.length && this.frames[this.next].t <= now) {
            this.deliver(this.frames[this.next++]);
        }
        this.clock = now;
        const end = this.frames.length ? this.frames[this.frames.length - 1].t : 0;
        this.onTime(Math.min(now, end));
        if (this.next < this.frames.length) {
            this.timer = setTimeout(() => this.tick(), Math.max(0, Math.min(250, this.frames[this.next].t - now)));
        } else {
            this.onTime(end);
            body.dataset.replayed = "end";
        }
    }
}

function clock(ms) {
    const s = Math.floor(ms / 1000);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

async function replay() {
    say("Loading the recording…");
    const r = await fetch("/.drawbridge/recording");
    if (!r.ok) {
        say("The recording could not be loaded: " + (await r.text()), true);
        return;
    }
    const intact = r.headers.get("x-recording-intact") === "true";
    const frames = parseRecording(await r.arrayBuffer());
    const end = frames.length ? frames[frames.length - 1].t : 0;
    const seek = document.getElementById("seek");
    const time = document.getElementById("time");
    const play = document.getElementById("play");
    document.getElementById("player").hidden = false;
    seek.max = String(end);
    let rfb = null;
    let player = null;
    const onTime = (t) => {
        seek.value = String(t);
        time.textContent = clock(t) + " / " + clock(end);
    };
    const startAt = (t) => {
        if (rfb) rfb.disconnect();
        screen.replaceChildren();
        body.dataset.replayed = "";
        player = new Player(frames, t, onTime);
        rfb = new RFB(screen, player, { shared: true });
        rfb.viewOnly = true;
        rfb.scaleViewport = true;
        rfb.addEventListener("credentialsrequired", () => rfb.sendCredentials({ password: "-" }));
        play.textContent = "Pause";
        window.drawbridgeRfb = rfb;
    };
    seek.addEventListener("change", () => startAt(Number(seek.value)));
    play.addEventListener("click", () => {
        if (!player) return;
        if (player.paused) {
            player.resume();
            play.textContent = "Pause";
        } else {
            player.pause();
            play.textContent = "Play";
        }
    });
    say(intact ? "Recording (hash verified)" : "Recording: INCOMPLETE OR CHANGED, its hash does not match the record", !intact);
    // `#end` jumps to the last frame (a link from the portal, and tests).
    startAt(location.hash === "#end" ? end : 0);
}

if (mode === "desktop") {
    connectLive("/.drawbridge/websockify", body.dataset.viewOnly === "true");
} else if (mode === "watch") {
    connectLive("/.drawbridge/watch", true);
} else if (mode === "replay") {
    replay().catch((e) => say("The recording could not be played: " + e.message, true));
}
