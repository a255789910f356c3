// personalign studio: keys 1 / 2 / 0 answer A / B / tie; the time to answer is sent along; no double submits.
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  var shownAt = Date.now();
  function typing(target) {
    var tag = (target && target.tagName) || "";
    return tag === "INPUT" || tag === "TEXTAREA" || (target && target.isContentEditable);
  }
  if (form) {
    var keys = { "1": "choose-A", "2": "choose-B", "0": "choose-tie" };
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      var id = keys[event.key];
      if (id) { event.preventDefault(); document.getElementById(id).click(); }
    });
    form.addEventListener("submit", function (event) {
      var choice = event.submitter && event.submitter.value;
      if (!choice) { event.preventDefault(); return; }  // Enter in the reason field: pick A, B or tie first
      if (form.dataset.sent) { event.preventDefault(); return; }
      form.dataset.sent = "1";
      form.elements.elapsed_ms.value = String(Date.now() - shownAt);
      // Keep the clicked button's value: disabling it before submit would drop it from the form data.
      var hidden = document.createElement("input");
      hidden.type = "hidden"; hidden.name = "choice"; hidden.value = choice;
      form.appendChild(hidden);
      Array.prototype.forEach.call(form.querySelectorAll("button"), function (b) { b.disabled = true; });
    });
  }
})();
