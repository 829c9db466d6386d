/* Site fixes for the book (Jupyter Book adds every .js in _static to every page).
 *
 * 1. Sidebar toggles. pydata-sphinx-theme 0.17 and sphinx-book-theme 1.3 bind their handlers
 *    to the first `.primary-toggle` / `.secondary-toggle` in the page, a hidden copy in the
 *    theme's own navbar (pydata-sphinx-theme issue 2451), so the visible buttons in the
 *    article header do nothing. A click on any other copy is forwarded to the first one, which
 *    opens the sidebar as a dialog below 992 px and collapses it on a wider screen.
 * 2. Figures. A tap or click on a figure image opens the image at full size.
 */
(() => {
  "use strict";
  const ready = (fn) =>
    document.readyState !== "loading"
      ? fn()
      : document.addEventListener("DOMContentLoaded", fn);

  ready(() => {
    for (const cls of [".primary-toggle", ".secondary-toggle"]) {
      const [bound, ...others] = document.querySelectorAll(cls);
      if (!bound) continue;
      for (const button of others) {
        button.addEventListener("click", (event) => {
          event.preventDefault();
          event.stopPropagation();
          button.blur();
          bound.click();
        });
      }
    }
  });

  ready(() => {
    const images = document.querySelectorAll(
      "main figure img, main .cell_output img"
    );
    for (const img of images) {
      if (img.closest("a")) continue;
      const link = document.createElement("a");
      link.href = img.currentSrc || img.src;
      link.className = "book-full-image";
      link.target = "_blank";
      link.rel = "noopener";
      link.title = "Open the full-size image";
      img.replaceWith(link);
      link.appendChild(img);
    }
  });
})();
