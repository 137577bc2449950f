// The server writes every time on the admin page in UTC, as <time datetime="..."> (right
// without JavaScript). This shows each in the browser's own time zone, named ("EST",
// "GMT+5:30"), and keeps the UTC time as the element's title, shown on hover.
(function () {
  "use strict";
  // en-US and the Gregorian calendar whatever the browser's locale: the page is in English and
  // its times read YYYY-MM-DD HH:MM:SS, the same shape as the UTC text the server writes.
  var format = new Intl.DateTimeFormat("en-US", {
    calendar: "gregory", numberingSystem: "latn", hourCycle: "h23",
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  function span(text) {
    var element = document.createElement("span");
    element.textContent = text;
    return element;
  }

  // As the server writes it: <span>date</span> <span>time zone</span>, so that on a phone
  // the time wraps between the two, not at a "-".
  function showLocal(time, date) {
    var part = {};
    format.formatToParts(date).forEach(function (piece) { part[piece.type] = piece.value; });
    time.replaceChildren(
      span(part.year + "-" + part.month + "-" + part.day), " ",
      span(part.hour + ":" + part.minute + ":" + part.second + " " + part.timeZoneName));
  }

  function showLocalTimes() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var date = new Date(times[i].getAttribute("datetime"));
      if (isNaN(date.getTime())) {
        continue;
      }
      if (!times[i].title) {
        times[i].title = times[i].textContent;
      }
      showLocal(times[i], date);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", showLocalTimes);
  } else {
    showLocalTimes();
  }
})();
