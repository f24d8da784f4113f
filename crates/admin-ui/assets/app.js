// Gorgon's dashboard: live refresh of the region a page marks with data-live (the event
// stream) and data-fragment (where its fresh HTML is), and the operator's actions, which call
// the admin API with the session cookie. No framework, nothing loaded from elsewhere.
"use strict";

function follow(region) {
  if (!window.EventSource) return;
  const source = new EventSource(region.dataset.live);
  let queued = false;
  const refresh = async () => {
    queued = false;
    const response = await fetch(region.dataset.fragment, { credentials: "same-origin" });
    if (response.ok) region.innerHTML = await response.text();
  };
  source.onmessage = () => {
    if (queued) return;
    queued = true;
    setTimeout(refresh, 100);
  };
}

document.querySelectorAll("[data-live]").forEach(follow);

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-post]");
  if (!button) return;
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  const body = {};
  if (button.dataset.transaction) body.transaction_id = button.dataset.transaction;
  if (button.dataset.step) body.step_id = button.dataset.step;
  if (button.dataset.message) body.response = { message: button.dataset.message };
  button.disabled = true;
  const response = await fetch(button.dataset.post, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    window.alert(answer.message || response.statusText);
    button.disabled = false;
    return;
  }
  const moved = answer.acknowledgement && answer.acknowledgement.transactionId;
  const here = decodeURIComponent(location.pathname.split("/").pop());
  if (moved && moved !== here) {
    location.href = location.pathname.replace(/[^/]+$/, encodeURIComponent(moved));
  } else {
    location.reload();
  }
});
