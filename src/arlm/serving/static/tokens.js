"use strict";
// The playground's answer tokens (the spans playground.html adds): their colour, accessible name and tip, by mouse
// and by keyboard. It uses the page's $, el and shown (its next script), once the page has loaded.

function colour(p) { return `hsl(${Math.round(120 * p)}, 75%, 82%)`; }

function fmt(p) { return p >= 0.001 ? p.toFixed(3) : p.toExponential(1); }

function product(parts) {  // the probability of a span's tokens together; undefined where one has none
  return parts.length && parts.every((p) => p.prob !== undefined) ? parts.reduce((a, p) => a * p.prob, 1) : undefined;
}

function label(span) {  // its accessible name: its text and the probability its colour shows
  const prob = product(span.parts), n = span.parts.length;
  const text = span.chars === "" ? "part of a character" : JSON.stringify(span.chars);
  return `${text}${n > 1 ? `, ${n} tokens` : ""}${prob === undefined ? "" : `, p = ${fmt(prob)}`}`;
}

function draw(span) {  // a token span from its tokens (parts): text, colour, marks, name
  const parts = span.parts, prob = product(parts);
  span.textContent = shown(span.chars);
  span.classList.toggle("multi", parts.length > 1);
  span.dataset.tokens = String(parts.length);
  span.dataset.ids = parts.map((p) => p.id).join(" ");
  if (prob !== undefined) {
    span.style.background = colour(prob);
    span.dataset.prob = String(prob);
  }
  const marked = parts.filter((p) => p.accepted !== undefined);  // speculative: all accepted drafts, or the target's
  const accepted = marked.length === parts.length && marked.every((p) => p.accepted);
  span.classList.toggle("accepted", marked.length > 0 && accepted);  // (a character's span is drawn again as its
  span.classList.toggle("target", marked.length > 0 && !accepted);   // tokens come: one mark, the last one)
  const top = (p) => (p.top || []).map((t) => [t.piece, t.prob]);
  if (parts.length === 1 && parts[0].top) span.dataset.top = JSON.stringify(top(parts[0]));
  else delete span.dataset.top;
  if (parts.length > 1) span.dataset.parts = JSON.stringify(parts.map((p) => [p.piece, p.prob, top(p)]));
  span.setAttribute("aria-label", label(span));
}

function fillTip(tip, span) {  // its probability and top-5; a character of several tokens: each token's own
  const parts = span.parts || [], prob = product(parts);
  if (prob === undefined && !parts.some((p) => p.top)) return false;
  tip.replaceChildren();
  const rows = (into, top) => (top || []).forEach((t) => {
    const row = el("div", "row");
    row.append(el("span", "", JSON.stringify(t.piece)), el("span", "", fmt(t.prob)));
    const bar = el("div", "bar");
    bar.style.width = `${Math.max(2, Math.round(t.prob * 100))}%`;
    into.append(row, bar);
  });
  if (parts.length === 1) {
    if (prob !== undefined) tip.appendChild(el("div", "", `p = ${fmt(prob)}`));
    rows(tip, parts[0].top);
    return true;
  }
  if (prob !== undefined) tip.appendChild(el("div", "", `p = ${fmt(prob)}: its ${parts.length} tokens' product`));
  const columns = el("div", "parts");
  for (const part of parts) {
    const column = el("div");
    column.appendChild(el("div", "part", `${part.piece}: p = ${part.prob === undefined ? "?" : fmt(part.prob)}`));
    rows(column, part.top);
    columns.appendChild(column);
  }
  tip.appendChild(columns);
  return true;
}

function hideTip() { $("#tip").style.display = "none"; }

function showTip(span, at) {  // at(tip): where it goes, kept inside the window
  const tip = $("#tip");
  if (!fillTip(tip, span)) { hideTip(); return; }
  tip.style.left = tip.style.top = "0px";  // measured where nothing squeezes it
  tip.style.display = "block";
  const [left, top] = at(tip);
  tip.style.left = `${Math.max(0, Math.min(left, innerWidth - tip.offsetWidth))}px`;
  tip.style.top = `${Math.max(0, Math.min(top, innerHeight - tip.offsetHeight))}px`;
}

function hover(event) {  // beside the pointer
  const span = event.target.closest && event.target.closest(".tok");
  if (!span) { hideTip(); return; }
  const place = (at, size, room) => (at + 14 + size > room ? at - 14 - size : at + 14);
  showTip(span, (tip) => [place(event.clientX, tip.offsetWidth, innerWidth),
    place(event.clientY, tip.offsetHeight, innerHeight)]);
}

function focused(event) {  // a token reached by the keyboard: it is where Tab comes back to, its tip below it
  const span = event.target.closest && event.target.closest(".tok");
  if (!span) return;
  span.parentElement.querySelectorAll(".tok[tabindex='0']").forEach((s) => { s.tabIndex = -1; });
  span.tabIndex = 0;
  const r = span.getBoundingClientRect();
  showTip(span, (tip) => [r.left, r.bottom + 4 + tip.offsetHeight > innerHeight ? r.top - 4 - tip.offsetHeight
    : r.bottom + 4]);
}

function key(event) {  // in the answer: arrows to the next / previous token, Home / End; anywhere: Escape hides the tip
  if (event.key === "Escape") { hideTip(); return; }
  const span = event.target.closest && event.target.closest(".tok");
  if (!span) return;
  const spans = [...span.parentElement.children], i = spans.indexOf(span);
  const to = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0,
               End: spans.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  spans[Math.max(0, Math.min(to, spans.length - 1))].focus();
}
