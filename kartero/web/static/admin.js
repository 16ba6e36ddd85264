// Kartero web admin: the "Copy" buttons next to DNS records. Without JavaScript the buttons stay
// hidden and the record text stays selectable; this file only adds to a page that works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = source.textContent;
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
        try { if (document.execCommand("copy")) { done(); } } catch (e) { /* the text stays selected */ }
      }
    });
  });
});

function select(element) {
  var range = document.createRange();
  range.selectNodeContents(element);
  var selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}
