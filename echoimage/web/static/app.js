// EchoImage page enhancements. The form works without this file: it adds drag and drop,
// a preview of the chosen file, and keeps only one of "file" and "URL" filled in.
(function () {
  "use strict";
  var form = document.querySelector(".search-form");
  if (!form) { return; }
  var drop = form.querySelector("[data-drop]");
  var input = form.querySelector("#file");
  var url = form.querySelector("#url");
  var status = form.querySelector("[data-file-status]");
  var submit = form.querySelector("[data-submit]");

  var maxBytes = parseInt(input.getAttribute("data-max-bytes") || "0", 10);

  function tooLarge() {
    var file = input.files && input.files.length ? input.files[0] : null;
    return file !== null && maxBytes > 0 && file.size > maxBytes;
  }

  function showFile() {
    status.textContent = "";
    status.classList.remove("too-large");
    if (!input.files || !input.files.length) { return; }
    var file = input.files[0];
    if (tooLarge()) {  // said now, not after the whole file was sent for a 413
      status.textContent = file.name + " is " + Math.round(file.size / 1048576) +
        " MB: the limit is " + input.getAttribute("data-max-size") + ". Choose a smaller file.";
      status.classList.add("too-large");
      return;
    }
    status.textContent = "Selected: " + file.name + " (" + Math.round(file.size / 1024) + " KB)";
    if (url) { url.value = ""; }
    if (file.type && file.type.indexOf("image/") === 0 && window.URL) {
      var img = document.createElement("img");
      img.alt = "Preview of the chosen image";
      img.src = URL.createObjectURL(file);
      img.onload = function () { URL.revokeObjectURL(img.src); };
      status.appendChild(img);
    }
  }

  input.addEventListener("change", showFile);
  if (url) {
    url.addEventListener("input", function () {
      if (url.value && input.value) { input.value = ""; status.textContent = ""; }
    });
  }
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (e) {
      e.preventDefault();
      drop.classList.add("dragging");
    });
  });
  ["dragleave", "dragend", "drop"].forEach(function (name) {
    drop.addEventListener(name, function () { drop.classList.remove("dragging"); });
  });
  drop.addEventListener("drop", function (e) {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      showFile();
    }
  });
  form.addEventListener("submit", function (e) {
    if (tooLarge()) {
      e.preventDefault();
      showFile();
      return;
    }
    if (submit) {
      submit.disabled = true;
      submit.textContent = "Searching\u2026";
    }
  });
  window.addEventListener("pageshow", function () {
    if (submit) { submit.disabled = false; submit.textContent = "Search"; }
  });
})();
