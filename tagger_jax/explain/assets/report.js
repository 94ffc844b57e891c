/* tagger-jax explanation page: spectrogram and map rows on one time axis, a cursor that follows
 * the audio, click to seek, zoom and scroll, tag and method choice, original / kept / removed
 * playback. Reads its data from <script id="data" type="application/json">; writes user text
 * with textContent only. No network, no libraries: works from file://. */
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('data').textContent);
  var app = document.getElementById('app');
  var LABEL_W = 210, CBAR_W = 124;  // as .label and .cbar in report.css
  var SPEC_H = 150, HZ_H = 12;      // spectrogram row and Hz label heights (px)
  var duration = Math.max(D.duration_s, D.spec.frames * D.spec.step_s + D.spec.start_s, 0.1);
  var view = { start: 0, pps: 0 };  // left edge (s), pixels per second
  var rows = [];                    // {data, el, canvas, img, visible}
  var audios = {};                  // id -> <audio>
  var active = null;                // id of the playing source

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function fmt(v) {
    if (v === 0) { return '0'; }
    var a = Math.abs(v);
    return (a >= 1e4 || a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
  }
  function clock(t) {
    var m = Math.floor(t / 60), s = t - 60 * m;
    return m + ':' + (s < 10 ? '0' : '') + s.toFixed(1);
  }

  // ---- player ------------------------------------------------------------------------------
  var player = el('div', { id: 'player' });
  var controls = el('div', { class: 'controls' });
  var playBtn = el('button', { id: 'play', type: 'button' }, '\u25B6 play');
  var origBtn = el('button', { id: 'play-original', type: 'button' }, 'original');
  var now = el('span', { id: 'now' }, '0:00.0');
  var source = el('span', { id: 'source' }, '');
  var zoomIn = el('button', { type: 'button', id: 'zoom-in', title: 'zoom in' }, '+');
  var zoomOut = el('button', { type: 'button', id: 'zoom-out', title: 'zoom out' }, '\u2212');
  var zoomFit = el('button', { type: 'button', id: 'zoom-fit', title: 'whole input' }, 'fit');
  [playBtn, origBtn, now, source, el('span', null, ' zoom'), zoomIn, zoomOut, zoomFit]
    .forEach(function (e) { controls.appendChild(e); });
  player.appendChild(controls);

  var audioBox = el('div', { id: 'audio', hidden: '' });
  function addAudio(id, file) {
    var a = el('audio', { id: 'audio-' + id, preload: 'metadata' });
    a.setAttribute('src', encodeURIComponent(file));
    a.dataset.source = id;
    a.addEventListener('ended', function () { playBtn.textContent = '\u25B6 play'; });
    audioBox.appendChild(a);
    audios[id] = a;
    return a;
  }
  if (D.audio && D.audio.original) { addAudio('original', D.audio.original); }
  else {
    [playBtn, origBtn].forEach(function (b) { b.disabled = true; });
    controls.appendChild(el('span', { class: 'meta' }, D.audio && D.audio.note ? D.audio.note
      : 'no audio'));
  }

  // ---- choice of tags and methods ----------------------------------------------------------
  var tagsBox = el('fieldset', { id: 'tags-choice' });
  tagsBox.appendChild(el('legend', null, 'tags'));
  var methodsBox = el('fieldset', { id: 'methods-choice' });
  methodsBox.appendChild(el('legend', null, 'methods'));
  var tagNames = [], methodNames = [];
  D.rows.forEach(function (r) {
    if (r.tag !== null && tagNames.indexOf(r.tag) < 0) { tagNames.push(r.tag); }
    if (methodNames.indexOf(r.method) < 0) { methodNames.push(r.method); }
  });
  var chosen = { tags: {}, methods: {} };
  function box(parent, kind, value, checked) {
    var label = el('label');
    var input = el('input', { type: 'checkbox' });
    input.checked = checked;
    input.dataset.kind = kind;
    input.dataset.value = value;
    chosen[kind][value] = checked;
    input.addEventListener('change', function () {
      chosen[kind][value] = input.checked;
      applyChoice();
    });
    label.appendChild(input);
    label.appendChild(document.createTextNode(' ' + value));
    parent.appendChild(label);
  }
  tagNames.forEach(function (t) { box(tagsBox, 'tags', t, true); });
  methodNames.forEach(function (m) { box(methodsBox, 'methods', m, true); });
  var choices = el('div', { class: 'controls' });
  choices.appendChild(tagsBox);
  choices.appendChild(methodsBox);
  if (D.audio && D.audio.keep !== undefined && D.audio.keep !== null) {
    choices.appendChild(el('span', { class: 'meta' }, 'auralised: top ' +
      Math.round(100 * D.audio.keep) + '% of each map kept, softness ' + D.audio.softness));
  }
  player.appendChild(choices);

  // ---- the strip of rows ------------------------------------------------------------------
  var strip = el('div', { id: 'strip' });
  var cursor = el('div', { id: 'cursor' });
  strip.appendChild(cursor);

  function colourBar(r, unit, height) {
    var c = el('div', { class: 'cbar' });
    var cv = el('canvas');
    var ticks = el('div', { class: 'ticks' });
    ticks.appendChild(el('span', null, fmt(r.vmax)));
    ticks.appendChild(el('span', { class: 'unit', title: unit }, unit));
    ticks.appendChild(el('span', null, fmt(r.vmin)));
    c.appendChild(cv);
    c.appendChild(ticks);
    var lut = D.luts[r.cmap];
    cv.width = 1; cv.height = lut.length;
    var g = cv.getContext('2d');
    for (var i = 0; i < lut.length; i++) {
      g.fillStyle = lut[lut.length - 1 - i];
      g.fillRect(0, i, 1, 1);
    }
    cv.style.height = height + 'px';
    c.style.height = height + 'px';
    return c;
  }

  function makeRow(r, height, labelText, unit) {
    var row = el('div', { class: 'row' });
    row.dataset.method = r.method || '';
    row.dataset.tag = r.tag === null || r.tag === undefined ? '' : r.tag;
    var label = el('div', { class: 'label' });
    label.appendChild(el('span', { class: 'title' }, labelText));
    if (unit) { label.appendChild(el('span', { class: 'unit' }, unit)); }
    var canvas = el('canvas', { class: 'map', height: String(height) });
    canvas.style.height = height + 'px';
    row.appendChild(label);
    row.appendChild(canvas);
    row.appendChild(colourBar(r, unit || '', height));
    var item = { data: r, el: row, canvas: canvas, label: label, img: null, visible: true };
    canvas.addEventListener('click', function (ev) {
      var rect = canvas.getBoundingClientRect();
      seek(view.start + (ev.clientX - rect.left) / view.pps);
    });
    canvas.addEventListener('wheel', function (ev) {
      if (!ev.ctrlKey && !ev.shiftKey) { return; }
      ev.preventDefault();
      var rect = canvas.getBoundingClientRect();
      var t = view.start + (ev.clientX - rect.left) / view.pps;
      if (ev.ctrlKey) { zoom(ev.deltaY < 0 ? 1.25 : 0.8, t); } else { scrollBy(ev.deltaY); }
    }, { passive: false });
    return item;
  }

  // the spectrogram
  var specRow = makeRow({ cmap: 'magma', vmin: D.spec.vmin, vmax: D.spec.vmax, method: 'spec',
                          tag: null }, SPEC_H, 'log-mel spectrogram', 'dB');
  specRow.kind = 'image';
  specRow.grid = D.spec;
  specRow.img = new Image();
  specRow.img.onload = redraw;
  specRow.img.src = D.spec.png;
  specRow.el.id = 'spectrogram';
  var hzBox = el('div', { class: 'hz-labels' });
  D.spec.hz_ticks.forEach(function (tk) {
    var y = SPEC_H - (tk[0] + 0.5) / D.spec.bands * SPEC_H;
    var label = el('span', { class: 'hz' }, tk[1]);
    label.style.top = Math.max(0, Math.min(SPEC_H - HZ_H, y - HZ_H / 2)) + 'px';
    hzBox.appendChild(label);
  });
  specRow.el.appendChild(hzBox);
  strip.appendChild(specRow.el);
  rows.push(specRow);

  D.rows.forEach(function (r) {
    var text = r.label + (r.tag !== null ? ': ' + r.tag : '');
    var item = makeRow(r, r.kind === 'image' ? 72 : 26, text, r.unit);
    item.kind = r.kind;
    item.grid = r;
    item.el.classList.add('maprow');
    if (r.kind === 'image') {
      item.img = new Image();
      item.img.onload = redraw;
      item.img.src = r.png;
    }
    if (r.audio) {
      var b = el('div', { class: 'buttons' });
      var kept = el('button', { type: 'button', class: 'play-kept',
                                title: 'hear what this map keeps' }, '\u25B6 kept');
      var removed = el('button', { type: 'button', class: 'play-removed',
                                   title: 'hear the input without it' }, '\u25B6 removed');
      var id = 'row' + r.id;
      addAudio(id + '-kept', r.audio.kept);
      addAudio(id + '-removed', r.audio.removed);
      kept.addEventListener('click', function () { play(id + '-kept', text + ' (kept)'); });
      removed.addEventListener('click', function () {
        play(id + '-removed', text + ' (removed)');
      });
      b.appendChild(kept);
      b.appendChild(removed);
      item.label.appendChild(b);
    } else if (r.silent) {
      item.label.appendChild(el('div', { class: 'meta', title: r.silent }, 'not auralised'));
    }
    strip.appendChild(item.el);
    rows.push(item);
  });

  var hscroll = el('div', { id: 'hscroll' });
  var spacer = el('div');
  hscroll.appendChild(spacer);
  // Tick labels are elements over the canvases (not canvas text), placed so that none runs
  // past the plot's edges: the last tick's label ends at its tick, the top band's label stays
  // inside the spectrogram.
  var axisBox = el('div', { id: 'axis-box' });
  var axis = el('canvas', { id: 'axis', class: 'map', height: '22' });
  axisBox.appendChild(axis);
  var axisRow = el('div', { class: 'row' });
  axisRow.appendChild(el('div', { class: 'label' }, 'time (s)'));
  axisRow.appendChild(axisBox);
  axisRow.appendChild(el('div', { class: 'cbar' }));

  app.appendChild(player);
  app.appendChild(strip);
  app.appendChild(axisRow);
  app.appendChild(hscroll);
  app.appendChild(audioBox);
  app.appendChild(el('p', { class: 'meta' }, 'Click a row to seek; ctrl + wheel zooms, ' +
    'shift + wheel or the bar below scrolls. Rows share the time axis; each has its own ' +
    'colour range.' + (D.rows.some(function (r) { return r.method === 'truth'; }) ?
      ' Ground-truth rows show where a tag sounds.' : '')));

  // ---- drawing -------------------------------------------------------------------------------
  function plotWidth() { return Math.max(50, strip.clientWidth - LABEL_W - CBAR_W); }
  function lutIndex(r, v) {
    var n = D.luts[r.cmap].length;
    var x = (v - r.vmin) / ((r.vmax - r.vmin) || 1e-12);
    return Math.max(0, Math.min(n - 1, Math.floor(x * n)));
  }
  function drawImageRow(item, g, w, h) {
    var gr = item.grid, img = item.img;
    if (!img || !img.complete || !img.naturalWidth) { return; }
    var f0 = (view.start - gr.start_s) / gr.step_s;      // frame at the left edge
    var fw = w / view.pps / gr.step_s;                   // frames across the canvas
    var s0 = Math.max(0, f0), s1 = Math.min(img.naturalWidth, f0 + fw);
    if (s1 <= s0) { return; }
    g.imageSmoothingEnabled = false;
    g.drawImage(img, s0, 0, s1 - s0, img.naturalHeight,
                (s0 - f0) / fw * w, 0, (s1 - s0) / fw * w, h);
  }
  function drawLineRow(item, g, w, h) {
    var r = item.grid, vals = r.values, lut = D.luts[r.cmap];
    for (var x = 0; x < w; x++) {
      var t0 = view.start + x / view.pps, t1 = view.start + (x + 1) / view.pps;
      var i0 = Math.floor((t0 - r.start_s) / r.step_s), i1 = Math.floor((t1 - r.start_s) / r.step_s);
      i0 = Math.max(0, i0); i1 = Math.min(vals.length - 1, Math.max(i0, i1));
      if (i0 > vals.length - 1 || i1 < 0) { continue; }
      var v = null;  // the strongest value under the pixel: peaks stay visible zoomed out
      for (var i = i0; i <= i1; i++) {  // null: a step no window covered (hatched by drawGaps)
        if (vals[i] === null) { continue; }
        if (v === null || (r.signed ? Math.abs(vals[i]) > Math.abs(v) : vals[i] > v)) {
          v = vals[i];
        }
      }
      if (v === null) { continue; }
      g.fillStyle = lut[lutIndex(r, v)];
      g.fillRect(x, 0, 1, h);
    }
  }
  var hatch = null;  // grey with diagonal lines: time no window covered (D.gaps)
  function drawGaps(g, w, h) {
    if (!D.gaps || !D.gaps.length) { return; }
    if (!hatch) {
      var p = document.createElement('canvas');
      p.width = 8; p.height = 8;
      var pg = p.getContext('2d');
      pg.fillStyle = '#d9d9d9'; pg.fillRect(0, 0, 8, 8);
      pg.strokeStyle = '#a0a0a0'; pg.beginPath(); pg.moveTo(0, 8); pg.lineTo(8, 0); pg.stroke();
      hatch = g.createPattern(p, 'repeat');
    }
    g.fillStyle = hatch;
    D.gaps.forEach(function (gap) {
      var x0 = (gap[0] - view.start) * view.pps, x1 = (gap[1] - view.start) * view.pps;
      x0 = Math.max(0, x0); x1 = Math.min(w, x1);
      if (x1 > x0) { g.fillRect(x0, 0, x1 - x0, h); }
    });
  }
  function drawAxis(w) {
    axis.width = w;
    var g = axis.getContext('2d');
    g.clearRect(0, 0, w, 22);
    var span = w / view.pps, steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
    var step = steps.find(function (s) { return span / s <= 12; }) || 600;
    g.fillStyle = '#333';
    axisBox.querySelectorAll('.tick').forEach(function (e) { axisBox.removeChild(e); });
    var first = Math.ceil(view.start / step - 1e-9);
    for (var k = first; k * step <= view.start + span + 1e-9; k++) {
      var t = k * step, x = (t - view.start) * view.pps;
      g.fillRect(Math.min(x, w - 1), 0, 1, 6);
      var label = el('span', { class: 'tick' },
                     step < 1 ? t.toFixed(1) : clock(t).replace(/\.0$/, ''));
      label.dataset.time = String(t);
      axisBox.appendChild(label);
      var lw = label.offsetWidth;  // right of its tick, or left of it where it would run over
      label.style.left = (x + 2 + lw <= w ? x + 2 : Math.max(0, x - 2 - lw)) + 'px';
    }
  }
  function drawHz(g, w, h) {  // tick marks; the labels are elements (.hz)
    g.fillStyle = '#fff';
    D.spec.hz_ticks.forEach(function (tk) {
      g.fillRect(0, h - (tk[0] + 0.5) / D.spec.bands * h, 4, 1);
    });
  }
  function redraw() {
    var w = plotWidth();
    if (!view.pps) { view.pps = w / duration; }
    spacer.style.width = Math.round(duration * view.pps) + 'px';
    rows.forEach(function (item) {
      if (!item.visible) { return; }
      var c = item.canvas, h = Number(c.getAttribute('height'));
      c.width = w;
      var g = c.getContext('2d');
      g.fillStyle = '#eee'; g.fillRect(0, 0, w, h);
      if (item.kind === 'image') { drawImageRow(item, g, w, h); } else { drawLineRow(item, g, w, h); }
      if (item === specRow) { drawHz(g, w, h); } else if (item.data.method !== 'truth') {
        drawGaps(g, w, h);
      }
    });
    drawAxis(w);
    moveCursor();
  }
  function currentTime() { return active ? audios[active].currentTime : (view.cursor || 0); }
  function moveCursor() {
    var t = currentTime();
    var x = (t - view.start) * view.pps;
    cursor.style.left = (LABEL_W + x) + 'px';
    cursor.style.display = (x < 0 || x > plotWidth()) ? 'none' : 'block';
    cursor.dataset.time = t.toFixed(3);
    now.textContent = clock(t) + ' / ' + clock(duration);
  }

  // ---- view: zoom and scroll -----------------------------------------------------------------
  function setStart(s) {
    var span = plotWidth() / view.pps;
    view.start = Math.max(0, Math.min(s, Math.max(0, duration - span)));
    hscroll.scrollLeft = view.start * view.pps;
    redraw();
  }
  function zoom(factor, around) {
    var w = plotWidth(), fit = w / duration;
    var t = around === undefined ? view.start + w / view.pps / 2 : around;
    var frac = (t - view.start) / (w / view.pps);
    view.pps = Math.max(fit, Math.min(view.pps * factor, 2000));
    spacer.style.width = Math.round(duration * view.pps) + 'px';
    setStart(t - frac * w / view.pps);
  }
  function scrollBy(dy) { setStart(view.start + dy / view.pps); }
  function cursorInView() {  // the buttons zoom around the cursor while it is on screen
    var t = currentTime(), span = plotWidth() / view.pps;
    return t >= view.start && t <= view.start + span ? t : undefined;
  }
  zoomIn.addEventListener('click', function () { zoom(2, cursorInView()); });
  zoomOut.addEventListener('click', function () { zoom(0.5, cursorInView()); });
  zoomFit.addEventListener('click', function () { view.pps = plotWidth() / duration; setStart(0); });
  hscroll.addEventListener('scroll', function () {
    var s = hscroll.scrollLeft / view.pps;
    if (Math.abs(s - view.start) * view.pps >= 1) { view.start = s; redraw(); }
  });
  window.addEventListener('resize', function () { redraw(); });
  if (window.ResizeObserver) {  // also when a scroll bar appears (no window resize event)
    var lastWidth = strip.clientWidth;
    new ResizeObserver(function () {
      if (strip.clientWidth !== lastWidth) { lastWidth = strip.clientWidth; redraw(); }
    }).observe(strip);
  }

  // ---- playback --------------------------------------------------------------------------------
  function seek(t) {
    t = Math.max(0, Math.min(t, duration));
    view.cursor = t;
    if (active) { audios[active].currentTime = t; }
    moveCursor();
  }
  function play(id, text) {
    var t = currentTime();
    Object.keys(audios).forEach(function (k) { if (k !== id) { audios[k].pause(); } });
    document.querySelectorAll('.active').forEach(function (e) { e.classList.remove('active'); });
    active = id;
    var a = audios[id];
    if (Math.abs(a.currentTime - t) > 0.05) { a.currentTime = Math.min(t, duration); }
    source.textContent = text;
    source.dataset.source = id;
    a.play();
    playBtn.textContent = '\u275A\u275A pause';
    tick();
  }
  function tick() {
    moveCursor();
    var a = active && audios[active];
    if (a && !a.paused) {
      var span = plotWidth() / view.pps, t = a.currentTime;
      if (t > view.start + 0.95 * span || t < view.start) { setStart(t - 0.1 * span); }
      window.requestAnimationFrame(tick);
    }
  }
  playBtn.addEventListener('click', function () {
    var a = active && audios[active];
    if (a && !a.paused) {
      a.pause();
      playBtn.textContent = '\u25B6 play';
      return;
    }
    if (active) { play(active, source.textContent); } else { play('original', 'original'); }
  });
  origBtn.addEventListener('click', function () { play('original', 'original'); });
  document.addEventListener('keydown', function (ev) {
    if (ev.key === ' ' && ev.target === document.body) { ev.preventDefault(); playBtn.click(); }
  });

  // ---- choice ------------------------------------------------------------------------------------
  function applyChoice() {
    rows.forEach(function (item) {
      if (item === specRow) { return; }
      var r = item.data;
      var vis = (r.method === 'truth' || chosen.methods[r.method] !== false) &&
                (r.tag === null || chosen.tags[r.tag] !== false);
      item.visible = vis;
      item.el.classList.toggle('hidden', !vis);
    });
    document.body.dataset.visibleRows = String(rows.filter(function (i) {
      return i.visible && i !== specRow; }).length);
    redraw();
  }
  applyChoice();
  document.body.dataset.ready = '1';
})();
