// The app's page script (bench/traffic/app.py): runs the page's WebSocket sessions.
// `kind` is set by the page; the query string says how many sessions, how many at once
// and how long.
const q = new URLSearchParams(location.search);
const total = +(q.get("n") || 10), conc = +(q.get("conc") || 2), dur = +(q.get("dur") || 4);
const wsUrl = "wss://" + (q.get("ws") || location.host) + "/ws/" + kind;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rnd = (a, b) => a + Math.random() * (b - a);
const exp = (mean) => -Math.log(1 - Math.random()) * mean;
const words = "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part".split(" ");
const text = (n) => Array.from({length: n}, () => words[Math.floor(Math.random() * words.length)]).join(" ");
async function chat(ws, end) {
  ws.send(JSON.stringify({type: "join", room: "general", user: "u" + Math.floor(rnd(1, 9999))}));
  while (Date.now() < end) {
    await sleep(exp(900));
    if (Math.random() < 0.5) ws.send(JSON.stringify({type: "typing"}));
    await sleep(rnd(200, 1500));
    ws.send(JSON.stringify({type: "message", id: crypto.randomUUID(), text: text(Math.floor(rnd(2, 30)))}));
  }
}
async function feed(ws, end) {
  ws.send(JSON.stringify({type: "subscribe", channels: ["prices", "metrics", "alerts"]}));
  while (Date.now() < end) { await sleep(2000); ws.send(JSON.stringify({type: "heartbeat", t: Date.now()})); }
}
async function edit(ws, end) {
  ws.send(JSON.stringify({type: "open", doc: "d" + Math.floor(rnd(1, 99))}));
  let v = 0;
  while (Date.now() < end) {
    const burst = Math.floor(rnd(3, 40));
    for (let i = 0; i < burst && Date.now() < end; i++) {
      ws.send(JSON.stringify({type: "op", v: v++, pos: Math.floor(rnd(0, 5000)),
        insert: Math.random() < 0.9 ? String.fromCharCode(97 + Math.floor(rnd(0, 26))) : " "}));
      await sleep(rnd(60, 260));
    }
    await sleep(exp(1200));
  }
}
async function upload(ws, end) {
  const size = Math.floor(rnd(1, 6) * 1048576);
  ws.send(JSON.stringify({type: "begin", name: "photo.jpg", size: size}));
  const chunk = new Uint8Array(65536);
  for (let sent = 0; sent < size && Date.now() < end + 5000; sent += chunk.length) {
    crypto.getRandomValues(chunk);
    ws.send(chunk);
    while (ws.bufferedAmount > 262144) await sleep(5);
  }
  ws.send(JSON.stringify({type: "end"}));
  await sleep(300);
}
const behaviours = {chat, feed, edit, upload};
function session() {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl);
    ws.binaryType = "arraybuffer";
    ws.onmessage = () => {};
    ws.onerror = () => resolve();
    ws.onclose = () => resolve();
    ws.onopen = async () => {
      try { await behaviours[kind](ws, Date.now() + dur * 1000 * rnd(0.5, 1.5)); } catch (e) {}
      ws.close(1000);
    };
  });
}
(async () => {
  let started = 0;
  async function worker() { while (started < total) { started++; await session(); await sleep(rnd(50, 400)); } }
  await Promise.all(Array.from({length: conc}, worker));
  document.title = "done";
})();
