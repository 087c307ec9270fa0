// pubbot console: progressive enhancement only. Every page works without
// this script; with it, the rule form is checked as you type, forms with
// data-confirm ask first, and a conversation adds new messages as they
// arrive.
(function () {
  "use strict";

  // Live validation: the same compiler as saving (POST /rules/check).
  var form = document.querySelector("form[data-check]");
  if (form) {
    var timer = null;
    var status = form.querySelector("[data-live-status]");
    var check = function () {
      var body = new URLSearchParams(new FormData(form));
      fetch(form.getAttribute("data-check"), {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" }
      })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (res) {
          if (!res) { return; }
          var errors = res.errors || {};
          form.querySelectorAll("[data-error-for]").forEach(function (el) {
            var f = el.getAttribute("data-error-for");
            el.textContent = (errors[f] || []).join("; ");
            var input = form.querySelector("[name='" + f + "']");
            if (input) { input.setAttribute("aria-invalid", errors[f] ? "true" : "false"); }
          });
          var general = errors.general || [];
          if (status) {
            var n = Object.keys(errors).length;
            status.textContent = n === 0 ? "The rule compiles." : (general.join("; ") || "Fix the fields marked above.");
            status.className = "live " + (n === 0 ? "ok" : "bad");
          }
        })
        .catch(function () {});
    };
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(check, 350);
    });
    form.addEventListener("change", check);
  }

  // Confirmation for forms that destroy something.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });

  // A conversation refreshes its messages every few seconds.
  var live = document.querySelector("[data-refresh]");
  if (live) {
    setInterval(function () {
      fetch(live.getAttribute("data-refresh"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var old = live.querySelector("[data-last]");
          var tmp = document.createElement("div");
          tmp.innerHTML = html;
          var fresh = tmp.querySelector("[data-last]");
          if (fresh && (!old || old.getAttribute("data-last") !== fresh.getAttribute("data-last") || old.innerHTML !== fresh.innerHTML)) {
            live.innerHTML = html;
          }
        })
        .catch(function () {});
    }, 3000);
  }
})();
