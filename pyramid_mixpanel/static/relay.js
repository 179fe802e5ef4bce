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

  function flush(unloading) {
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    }
    while (queue.length) {
      var batch = queue.splice(0, MAX_BATCH);
      post(JSON.stringify({ batch: batch }), unloading);
    }
  }

  function track(event, properties) {
    var item = { event: event, properties: properties || {}, insert_id: insertId() };
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
