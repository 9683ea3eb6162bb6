// tunery console: the few scripted parts (streaming chat, charts, confirmations). No inline scripts:
// the page's Content-Security-Policy allows scripts from this server's files only.
"use strict";

(function () {
  const csrf = () => document.body.dataset.csrf || "";

  // htmx sends the session's CSRF token with every request it makes.
  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });

  // A refused htmx request (4xx, 5xx) is shown, not silently dropped.
  document.addEventListener("htmx:responseError", (event) => {
    const flash = document.getElementById("flash");
    if (!flash) return;
    let message = "The request was refused (" + event.detail.xhr.status + ").";
    try { message = JSON.parse(event.detail.xhr.responseText).error.message || message; } catch (e) { /* not JSON */ }
    flash.textContent = message;
    flash.hidden = false;
  });
  document.addEventListener("htmx:beforeRequest", () => {
    const flash = document.getElementById("flash");
    if (flash) flash.hidden = true;
  });

  // Forms with data-confirm ask first (revoke, cancel, promote, rollback).
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);

  document.addEventListener("focusin", (event) => {
    if (event.target.matches && event.target.matches("[data-select-on-focus]")) event.target.select();
  });

  // ---- Playground -------------------------------------------------------------------------
  function setupPlayground(form) {
    const columns = {a: document.getElementById("column-a"), b: document.getElementById("column-b")};
    const history = {a: [], b: []};
    const sideBySide = document.getElementById("side-by-side");
    const modelB = document.getElementById("model-b");
    const titles = () => {
      columns.a.querySelector(".column-title").textContent = document.getElementById("model-a").value;
      columns.b.querySelector(".column-title").textContent = modelB.value;
    };
    const reset = () => {
      history.a = []; history.b = [];
      for (const c of Object.values(columns)) c.querySelector(".transcript").replaceChildren();
      titles();
    };
    sideBySide.addEventListener("change", () => {
      modelB.disabled = !sideBySide.checked;
      columns.b.hidden = !sideBySide.checked;
      document.getElementById("columns").classList.toggle("two", sideBySide.checked);
      reset();
    });
    document.getElementById("model-a").addEventListener("change", reset);
    modelB.addEventListener("change", reset);
    document.getElementById("new-conversation").addEventListener("click", reset);
    const prompt = document.getElementById("prompt");
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      const send = document.getElementById("send");
      send.disabled = true;
      prompt.value = "";
      const which = sideBySide.checked ? ["a", "b"] : ["a"];
      const models = {a: document.getElementById("model-a").value, b: modelB.value};
      await Promise.all(which.map((k) => ask(form, columns[k], history, k, models[k], text)));
      send.disabled = false;
      prompt.focus();
    });
    titles();
  }

  function bubble(transcript, role, text) {
    const div = document.createElement("div");
    div.className = "message " + role;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role === "user" ? "You" : "Model";
    const body = document.createElement("div");
    body.className = "content";
    body.textContent = text;
    div.append(who, body);
    transcript.append(div);
    return div;
  }

  async function ask(form, column, history, key, model, text) {
    const transcript = column.querySelector(".transcript");
    const system = document.getElementById("system").value.trim();
    history[key].push({role: "user", content: text});
    bubble(transcript, "user", text);
    const answer = bubble(transcript, "assistant", "");
    answer.setAttribute("aria-busy", "true");
    const content = answer.querySelector(".content");
    const messages = (system ? [{role: "system", content: system}] : []).concat(history[key]);
    let completionId = null, failed = null;
    try {
      const response = await fetch(form.dataset.chatUrl, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                  "X-CSRF-Token": csrf()},
        body: JSON.stringify({model, messages,
                              temperature: parseFloat(document.getElementById("temperature").value),
                              max_tokens: parseInt(document.getElementById("max-tokens").value, 10)}),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || ("request refused (" + response.status + ")"));
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, cut).replace(/^data: /, "");
          buffer = buffer.slice(cut + 2);
          if (line === "[DONE]") continue;
          const chunk = JSON.parse(line);
          if (chunk.error) { failed = chunk.error.message; continue; }
          completionId = chunk.id;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) content.textContent += delta.content;
        }
      }
    } catch (error) {
      failed = error.message;
    }
    answer.removeAttribute("aria-busy");
    if (failed) {
      history[key].pop();
      const problem = document.createElement("p");
      problem.className = "problem";
      problem.setAttribute("role", "alert");
      problem.textContent = failed;
      answer.append(problem);
      return;
    }
    history[key].push({role: "assistant", content: content.textContent});
    answer.dataset.completionId = completionId;
    const tools = document.getElementById("feedback-form").content.cloneNode(true);
    tools.querySelector("[name=completion_id]").value = completionId;
    answer.append(tools);
    const added = answer.querySelector("form.feedback");
    if (window.htmx) window.htmx.process(added);
  }

  // ---- Charts (job pages) -----------------------------------------------------------------
  window.tuneryCharts = {};

  function drawCurve(holder) {
    if (!window.uPlot) return;
    const source = document.getElementById(holder.dataset.curve);
    if (!source) return;
    const data = JSON.parse(source.textContent);
    const width = Math.max(280, holder.clientWidth - 8);
    const opts = {
      width, height: 260, scales: {x: {time: false}},
      axes: [{label: "step"}, {label: "loss"}],
      series: [{label: "step"},
               {label: "train loss", stroke: "#2563eb", width: 2, spanGaps: true},
               {label: "validation loss", stroke: "#d97706", width: 2, spanGaps: true,
                points: {show: true, size: 6}}],
    };
    const plotHolder = holder.querySelector(".plot");
    const id = holder.id;
    if (window.tuneryCharts[id]) {
      window.tuneryCharts[id].setData([data.step, data.train_loss, data.valid_loss]);
    } else {
      plotHolder.replaceChildren();
      window.tuneryCharts[id] = new window.uPlot(opts, [data.step, data.train_loss, data.valid_loss], plotHolder);
    }
    holder.dataset.points = String(data.step.length);
  }

  function drawCurves(root) {
    (root || document).querySelectorAll("[data-curve]").forEach(drawCurve);
  }

  document.addEventListener("htmx:afterSettle", () => drawCurves(document));
  window.addEventListener("resize", () => {
    for (const [id, plot] of Object.entries(window.tuneryCharts)) {
      const holder = document.getElementById(id);
      if (holder) plot.setSize({width: Math.max(280, holder.clientWidth - 8), height: 260});
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("chat-form");
    if (form) setupPlayground(form);
    drawCurves(document);
  });
})();
