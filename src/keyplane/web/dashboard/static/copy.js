// The "Copy" button of a secret shown once: copies the field it names, and says whether it did
// (the secret is not shown again: a silent failure would lose it).
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  button.addEventListener("click", function () {
    var field = document.getElementById(button.getAttribute("data-copy"));
    var said = document.getElementById("copied");
    var say = function (text) { if (said) { said.textContent = text; } };
    var fallback = function () {
      field.select();
      var done = false;
      try { done = document.execCommand("copy"); } catch (e) { done = false; }
      say(done ? "Copied." : "Could not copy: select the key and copy it yourself.");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(function () { say("Copied."); }, fallback);
    } else {
      fallback();
    }
  });
});
