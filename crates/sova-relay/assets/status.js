"use strict";
// Renders the relay's JSON API. Every value goes through textContent, never innerHTML:
// instance names are chosen by clients and must never become markup.

const POLL_MS = 1000;
let previous = null;

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function element(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined) node.textContent = content;
  if (className) node.className = className;
  return node;
}

function duration(seconds) {
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  const hours = Math.floor(seconds / 3600);
  return hours + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function perSecond(now, before, key) {
  if (!before) return "–";
  const seconds = (now.at - before.at) / 1000;
  if (seconds <= 0) return "–";
  return ((now.status.totals[key] - before.status.totals[key]) / seconds).toFixed(1);
}

function renderStatus(status) {
  const sample = { at: Date.now(), status };
  text("summary", "v" + status.relay_version + " · Sova " + status.sova_version +
    " · up " + duration(status.uptime_seconds) + (status.shutting_down ? " · shutting down" : ""));
  // Cluster mode: which node this is, the live nodes, and the whole cluster's instances.
  const cluster = document.getElementById("cluster");
  if (status.cluster) {
    cluster.hidden = false;
    text("cluster", "node " + status.node + " of " + status.cluster.nodes.join(", ") +
      " · " + status.cluster.instances + " instances in the cluster" +
      (status.cluster.connected ? "" : " · NATS unreachable: serving this node's instances only"));
  } else {
    cluster.hidden = true;
  }
  text("instances", status.instances + " / " + status.max_instances);
  text("sessions", String(status.sessions));
  text("rate-in", perSecond(sample, previous, "messages_in"));
  text("rate-out", perSecond(sample, previous, "messages_out"));
  text("rate-limited", String(status.totals.rate_limited));
  text("slow", String(status.totals.slow_consumer_disconnects));
  previous = sample;
}

function renderSessions(sessions) {
  const list = document.getElementById("session-list");
  const nodes = [];
  // The default session first, then the others in the relay's order.
  const ordered = [...sessions].sort((a, b) =>
    (b.session === "default") - (a.session === "default"));
  for (const session of ordered) {
    const box = element("article", undefined, "session");
    const title = session.token !== undefined
      ? (session.token === "" ? "default session" : "session “" + session.token + "”")
      : (session.session === "default" ? "default session" : "session #" + session.session);
    box.append(element("h3", title + " · " + session.instances.length + " instance" +
      (session.instances.length === 1 ? "" : "s")));
    const table = element("table");
    const head = element("tr");
    for (const [label, narrow] of [["Name"], ["Connected for"], ["Last activity"], ["Transport", true], ["Version", true]]) {
      head.append(element("th", label, narrow ? "hide-narrow" : undefined));
    }
    table.append(head);
    for (const instance of session.instances) {
      const row = element("tr");
      row.dataset.instance = instance.id;
      row.append(element("td", instance.name, "instance-name"));
      row.append(element("td", duration(instance.connected_seconds)));
      const idle = instance.idle_seconds;
      row.append(element("td", idle === null ? "—" : idle < 2 ? "now" : duration(idle) + " ago"));
      row.append(element("td", instance.node && instance.transport === "remote"
        ? "on " + instance.node : instance.transport, "hide-narrow"));
      row.append(element("td", instance.version, "hide-narrow"));
      table.append(row);
    }
    box.append(table);
    nodes.push(box);
  }
  if (nodes.length === 0) nodes.push(element("p", "No instances connected.", "muted"));
  list.replaceChildren(...nodes);
}

async function poll() {
  const badge = document.getElementById("connection");
  try {
    const [status, sessions] = await Promise.all(
      ["/api/status", "/api/sessions"].map((url) =>
        fetch(url, { cache: "no-store" }).then((r) => {
          if (!r.ok) throw new Error(url + ": " + r.status);
          return r.json();
        })));
    renderStatus(status);
    renderSessions(sessions);
    badge.dataset.state = "live";
    badge.textContent = "live";
  } catch (error) {
    badge.dataset.state = "down";
    badge.textContent = "relay unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
