/* pyramid_mixpanel relay helper: page views and clicks, sent to your app's relay endpoint.
 *
 *   <script src="${request.static_url('pyramid_mixpanel:static/relay.js')}"
 *           data-endpoint="/mixpanel/track" defer></script>
 *   <a href="/pricing" data-mixpanel-click="Pricing link">Pricing</a>
 *
 * Options (attributes of the script tag):
 *   data-endpoint     the relay path (default /mixpanel/track)
 *   data-page-view    "false" to not send "Page Viewed" on load
 *   data-csrf-token   a Pyramid CSRF token, for mixpanel.relay.csrf = pyramid
 *   data-max-value-length / data-max-body-bytes
 *                     mixpanel.relay.max_value_length / .max_body_bytes when not the defaults
 *                     (1024 / 65536): longer strings are cut, batches are split to fit
 *
 * Events are queued and sent in one batch shortly after they happen; when the page is hidden
 * or left (a click on a link, a closed tab), what is queued goes with navigator.sendBeacon,
 * which the browser delivers even as the page unloads. Each event carries a random insert_id,
 * so one that is sent twice is counted once. window.pyramidMixpanel.track(event, properties)
 * sends other allowed events.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var data = (script && script.dataset) || {};
  var endpoint = data.endpoint || "/mixpanel/track";
  var csrfToken = data.csrfToken || null;
  var queue = [];
  var timer = null;
  var MAX_BATCH = 50;
  var maxLength = parseInt(data.maxValueLength, 10) || 1024;
  var maxBytes = parseInt(data.maxBodyBytes, 10) || 65536;

  function insertId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function post(body, unloading) {
    // sendBeacon cannot carry headers: with a CSRF token, a keepalive fetch (which also
    // outlives the page) carries it instead.
    if (unloading && !csrfToken && navigator.sendBeacon) {
      var blob = new Blob([body], { type: "application/json" });
      try {
        if (navigator.sendBeacon(endpoint, blob)) {
          return;
        }
      } catch (error) {
        // Some browsers refuse a JSON beacon to another origin: the keepalive fetch goes.
      }
    }
    var headers = { "Content-Type": "application/json" };
    if (csrfToken) {
      headers["X-CSRF-Token"] = csrfToken;
    }
    window.fetch(endpoint, {
      method: "POST",
      headers: headers,
      body: body,
      credentials: "include",  // the relay may be another origin of the site
      keepalive: true
    }).catch(function () { /* analytics must never break the page */ });
  }

  // The relay refuses a string longer than its limit, and with it the event: cut it instead.
  function clip(value) {
    if (typeof value !== "string") {
      return value;
    }
    if (value.length > maxLength) {
      value = value.slice(0, maxLength);
      // Never half of a surrogate pair: the relay refuses such JSON (as it is not text).
      var last = value.charCodeAt(maxLength - 1);
      if (last >= 0xd800 && last <= 0xdbff) {
        value = value.slice(0, -1);
      }
    }
    return value.toWellFormed ? value.toWellFormed() : value;
  }

  function clipAll(properties) {
    var clipped = {};
    Object.keys(properties || {}).forEach(function (key) {
      var value = properties[key];
      clipped[key] = Array.isArray(value) ? value.map(clip) : clip(value);
    });
    return clipped;
  }

  function flush(unloading) {
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    }
    // Batches of at most MAX_BATCH items and maxBytes of UTF-8 (the relay refuses a larger
    // body whole); 32 bytes are kept for {"batch":[…]} and the commas.
    var batch = [];
    var bytes = 32;
    while (queue.length) {
      var item = queue.shift();
      var size = new Blob([JSON.stringify(item)]).size + 1;
      if (batch.length && (batch.length === MAX_BATCH || bytes + size > maxBytes)) {
        post(JSON.stringify({ batch: batch }), unloading);
        batch = [];
        bytes = 32;
      }
      batch.push(item);
      bytes += size;
    }
    if (batch.length) {
      post(JSON.stringify({ batch: batch }), unloading);
    }
  }

  function track(event, properties) {
    var item = { event: event, properties: clipAll(properties), insert_id: insertId() };
    // No client timestamp: the server's clock stamps the event, a wrong device clock cannot.
    queue.push(item);
    if (timer === null) {
      timer = window.setTimeout(function () { flush(false); }, 250);
    }
  }

  function pageView() {
    var properties = { Path: window.location.pathname, Title: document.title };
    if (document.referrer) {
      properties.$referrer = document.referrer;
    }
    track("Page Viewed", properties);
  }

  document.addEventListener("click", function (e) {
    var target = e.target && e.target.closest ? e.target.closest("[data-mixpanel-click]") : null;
    if (!target) {
      return;
    }
    var title = target.getAttribute("data-mixpanel-click") || target.textContent.trim();
    track("Button/Link Clicked", {
      Title: title.slice(0, 255),
      Path: window.location.pathname
    });
  }, true);

  // pagehide fires when the page is left (bfcache included); hidden covers tabs closed on mobile.
  window.addEventListener("pagehide", function () { flush(true); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      flush(true);
    }
  });

  window.pyramidMixpanel = { track: track, flush: flush };
  if (data.pageView !== "false") {
    pageView();
  }
})();
