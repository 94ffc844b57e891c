/* tagger-jax explanation index: filter, sort and page the table of inputs in the browser, so the
 * list stays usable for thousands of inputs. The table is plain HTML; this only hides rows. */
(function () {
  'use strict';
  var table = document.getElementById('inputs');
  var body = table.tBodies[0];
  var all = Array.prototype.slice.call(body.rows);
  var size = Number(table.dataset.pageSize) || 100;
  var filter = document.getElementById('filter');
  var count = document.getElementById('count');
  var pageText = document.getElementById('page');
  var page = 0, shown = all;

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.max(0, Math.min(page, pages - 1));
    all.forEach(function (r) { r.hidden = true; });
    shown.slice(page * size, (page + 1) * size).forEach(function (r) { r.hidden = false; });
    count.textContent = shown.length + ' of ' + all.length + ' input(s)';
    pageText.textContent = 'page ' + (page + 1) + ' of ' + pages;
    document.getElementById('prev').disabled = page === 0;
    document.getElementById('next').disabled = page >= pages - 1;
  }
  function applyFilter() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    shown = all.filter(function (r) {
      var text = r.textContent.toLowerCase();
      return words.every(function (w) { return text.indexOf(w) >= 0; });
    });
    page = 0;
    render();
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    if (!th.dataset.type) { return; }
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      Array.prototype.forEach.call(th.parentNode.cells, function (c) {
        c.classList.remove('asc', 'desc');
      });
      th.classList.add(asc ? 'asc' : 'desc');
      var key = function (r) {
        var c = r.cells[col];
        var v = c.dataset.sort !== undefined ? c.dataset.sort : c.textContent;
        return th.dataset.type === 'number' ? Number(v) : v.toLowerCase();
      };
      all.sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      all.forEach(function (r) { body.appendChild(r); });
      applyFilter();
    });
  });
  filter.addEventListener('input', applyFilter);
  document.getElementById('prev').addEventListener('click', function () { page--; render(); });
  document.getElementById('next').addEventListener('click', function () { page++; render(); });
  applyFilter();
  document.body.dataset.ready = '1';
})();
