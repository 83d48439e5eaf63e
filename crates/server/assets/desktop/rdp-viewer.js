// Drawbridge's RDP viewer: Devolutions' IronRDP web client (served from the
// copy the server found, never part of this repository) on a desktop origin.
// The client speaks RDCleanPath to the server, which connects to the RDP
// server through the session and does TLS with it. Three modes:
//   desktop - the user's own desktop over /.drawbridge/rdcleanpath
//   watch   - someone's desktop, live and read-only, over /.drawbridge/watch
//   replay  - a stored recording, played by the server over /.drawbridge/replay
import "./ironrdp/iron-remote-desktop.js";
import { Backend, init, displayControl } from "./ironrdp/iron-remote-desktop-rdp.js";

const body = document.body;
const mode = body.dataset.mode;
const viewOnly = body.dataset.viewOnly === "true";
// Credentials stored for this desktop: the server logs on with them, and this
// page sends placeholders (it never has them).
const stored = body.dataset.stored === "true";
const screen = document.getElementById("screen");
const statusLine = document.getElementById("status");

function say(text, error) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", !!error);
}

function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

// The client opens its WebSocket itself; this subclass (a real WebSocket)
// keeps the reason the server closes with, so that the user sees it.
let lastReason = "";
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
        super(...args);
        this.addEventListener("close", (e) => {
            if (e.reason) lastReason = e.reason;
        });
    }
};

// What the server's RDCleanPath error statuses mean (the close reason, when
// there is one, says more).
const REFUSED = {
    400: "the request was malformed",
    401: "this page's ticket was refused; reload the page",
    403: "you may not open this desktop",
    404: "this desktop is not in this session",
    409: "refused (the RDP server's certificate changed, or the session is not active)",
    502: "the RDP server could not be reached or refused the connection",
    504: "the RDP server did not answer in time",
};

function describe(err) {
    if (err && typeof err.kind === "function") {
        const details = typeof err.rdcleanpathDetails === "function" ? err.rdcleanpathDetails() : null;
        const status = details && details.httpStatusCode;
        if (status) return REFUSED[status] || "refused (HTTP " + status + ")";
        if (details && details.tlsAlertCode !== undefined && details.tlsAlertCode !== null) {
            return "TLS with the RDP server failed (alert " + details.tlsAlertCode + ")";
        }
        let text = "";
        try { text = err.backtrace(); } catch (_) { text = ""; }
        return ["error", "wrong password", "logon failed", "access denied", "gateway error",
            "the gateway could not be reached", "negotiation failed"][err.kind()] + (text ? ": " + text.split("\n")[0] : "");
    }
    return String(err && err.message ? err.message : err);
}

function desktopSize() {
    const w = Math.min(1920, Math.max(640, screen.clientWidth || 1024)) & ~1;
    const h = Math.min(1200, Math.max(480, screen.clientHeight || 768)) & ~1;
    return { width: w, height: h };
}

async function ticket() {
    const r = await fetch("/.drawbridge/rdp-ticket", { cache: "no-store" });
    if (!r.ok) throw new Error(await r.text());
    return (await r.text()).trim();
}

// Connects the web client to `path`; `live` says what to call a connection.
function connect(path, creds, connectedText) {
    lastReason = "";
    const el = document.createElement("iron-remote-desktop");
    el.module = Backend; // read when the element mounts
    el.setAttribute("scale", "fit");
    el.setAttribute("flexcenter", "true");
    el.addEventListener("ready", async (e) => {
        const ui = e.detail.irgUserInteraction;
        // A fixed channel set: no clipboard, no resizing (a watcher or replay
        // of this desktop needs the same one).
        ui.setEnableClipboard(false);
        try {
            const auth = mode === "desktop" ? await ticket() : mode;
            let builder = ui.configBuilder()
                .withUsername(creds.user)
                .withPassword(creds.pass)
                .withDestination("desktop")
                .withProxyAddress(wsUrl(path))
                .withAuthToken(auth)
                .withDesktopSize(desktopSize())
                .withExtension(displayControl(false));
            if (creds.domain) builder = builder.withServerDomain(creds.domain);
            const session = await ui.connect(builder.build());
            ui.setVisibility(true);
            body.dataset.connected = "true";
            say(connectedText);
            window.drawbridgeRdp = { ui, element: el };
            const end = await session.run();
            body.dataset.connected = "false";
            say("Closed: " + (lastReason || end.reason()), true);
        } catch (err) {
            const was = body.dataset.connected === "true";
            body.dataset.connected = "false";
            // The server's close (with its reason) follows its error PDU.
            await new Promise((r) => setTimeout(r, 500));
            say((was ? "Closed: " : "Refused: ") + (lastReason || describe(err)), true);
        }
    }, { once: true });
    screen.replaceChildren(el);
}

function login() {
    const form = document.getElementById("login");
    form.hidden = false;
    say("Log on to the desktop" + (viewOnly ? " (view only)" : ""));
    document.getElementById("user").focus();
    form.addEventListener("submit", (e) => {
        e.preventDefault();
        form.hidden = true;
        const creds = {
            user: document.getElementById("user").value,
            pass: document.getElementById("pass").value,
            domain: document.getElementById("domain").value,
        };
        document.getElementById("pass").value = "";
        say("Connecting…");
        connect("/.drawbridge/rdcleanpath", creds, viewOnly ? "Connected (view only)" : "Connected");
    });
}

function clock(ms) {
    const s = Math.floor(ms / 1000);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

async function replay() {
    const r = await fetch("/.drawbridge/replay-info", { cache: "no-store" });
    if (!r.ok) {
        say("The recording could not be loaded: " + (await r.text()), true);
        return;
    }
    const info = await r.json();
    const seek = document.getElementById("seek");
    const time = document.getElementById("time");
    document.getElementById("player").hidden = false;
    seek.max = String(info.end_ms);
    const startAt = (t) => {
        seek.value = String(t);
        time.textContent = clock(t) + " / " + clock(info.end_ms);
        const intact = info.intact ? "Replaying (hash verified)" : "Replaying: INCOMPLETE OR CHANGED, its hash does not match the record";
        connect("/.drawbridge/replay?from=" + Math.floor(t), { user: "replay", pass: "", domain: "" }, intact);
    };
    seek.addEventListener("change", () => startAt(Number(seek.value)));
    // `#end` jumps to the last frame (tests, and a quick look).
    startAt(location.hash === "#end" ? info.end_ms : 0);
}

try {
    await init("WARN");
} catch (e) {
    say("The RDP viewer did not start: " + describe(e), true);
    throw e;
}
if (mode === "desktop" && stored) {
    say("Connecting: the server signs in with the stored credentials…");
    connect("/.drawbridge/rdcleanpath", { user: "stored", pass: "stored", domain: "" },
        "Connected: signed in by the server" + (viewOnly ? " (view only)" : ""));
} else if (mode === "desktop") {
    login();
} else if (mode === "watch") {
    connect("/.drawbridge/watch", { user: "watcher", pass: "", domain: "" }, "Watching (read-only)");
} else if (mode === "replay") {
    replay().catch((e) => say("The recording could not be played: " + e.message, true));
}
