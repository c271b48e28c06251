#!/usr/bin/env node
// discord.js 14 against the sandbox, unmodified apart from the REST base.
//
// Usage: node client.js DESCRIBE_JSON ACCOUNT
//
// DESCRIBE_JSON is the sandbox's description (what `probe sandbox --describe`
// writes). The one setting changed is `rest.api` (https://discord.com/api on
// Discord): discord.js asks `GET /gateway/bot` where the gateway is, so the
// sandbox decides that. The script logs in as ACCOUNT, probes `!help` and
// waits for the simulated bot's reply, replies to it with an embed, reacts,
// edits and deletes that reply, sets a presence with an activity, has the
// sandbox close its connection with 4000 and waits for discord.js to RESUME,
// sends once through a forced 429 (discord.js waits and retries), and fetches
// its application. It prints one JSON line of results and exits 0 on success,
// 1 on failure (the reason in the JSON line and on stderr), 2 on bad usage or
// a missing dependency. The whole run is bounded by OVERALL_TIMEOUT_MS.
'use strict';

const fs = require('node:fs');

const OVERALL_TIMEOUT_MS = 30_000;
const BOT_ACCOUNT = 'twi-bot-shard';
const CHANNEL = 'probes';
const HELP_TITLE = 'Interactive Help System';
const SETUP_HINT = 'run scripts/test.sh, which installs discord.js with npm ci in sandbox/tests/compat/discordjs';

function usageError(message) {
  console.error(`discordjs_client: ${message}`);
  console.log(JSON.stringify({ ok: false, error: message }));
  process.exit(2);
}

let discord;
try {
  discord = require('discord.js');
} catch (e) {
  usageError(`discord.js is not installed (${e.message}): ${SETUP_HINT}`);
}
const { Client, Events, GatewayIntentBits, ActivityType, EmbedBuilder, RESTEvents } = discord;

const [describePath, accountName] = process.argv.slice(2);
if (!describePath || !accountName) usageError('usage: client.js DESCRIBE_JSON ACCOUNT');

const results = { ok: false, account: accountName, discord_js: discord.version, node: process.version };
const complaints = [];
let step = 'starting';

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

// Resolves with the first `event` for which `pick` returns a value.
function next(client, event, what, pick) {
  step = `waiting for ${what}`;
  return new Promise((resolve) => {
    const listener = (...args) => {
      const value = pick(...args);
      if (value !== undefined) {
        client.off(event, listener);
        resolve(value);
      }
    };
    client.on(event, listener);
  });
}

async function control(describe, path, body) {
  const url = `${describe.control_url}${path}`;
  step = `calling the sandbox's control API (${url})`;
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  check(r.ok, `POST ${url}: HTTP ${r.status}: ${await r.text()}`);
}

async function run(describe, client) {
  const account = describe.accounts.find((a) => a.name === accountName);
  check(account, `no account named ${accountName} in the description`);
  const target = describe.accounts.find((a) => a.name === BOT_ACCOUNT);
  check(target, `no account named ${BOT_ACCOUNT} in the description`);

  const statuses = [];
  client.rest.on(RESTEvents.Response, (request, response) => statuses.push(`${request.method} ${response.status}`));

  step = 'logging in';
  const ready = next(client, Events.ClientReady, 'READY', () => true);
  await client.login(account.token);
  await ready;
  check(client.user.id === account.id, `logged in as ${client.user.id}, expected ${account.id}`);
  results.logged_in_as = { id: client.user.id, name: client.user.username, bot: client.user.bot };

  const guild = client.guilds.cache.get(describe.guilds[0].id);
  check(guild, `guild ${describe.guilds[0].name} not in the cache after READY`);
  const channel = guild.channels.cache.find((c) => c.name === CHANNEL);
  check(channel && channel.isTextBased(), `#${CHANNEL} is not a visible text channel`);
  results.guild = guild.name;

  // A probe and the simulated bot's answer.
  const probe = await channel.send('!help');
  const answer = await next(client, Events.MessageCreate, 'the bot\'s reply', (m) =>
    m.author.id === target.id && m.reference?.messageId === probe.id ? m : undefined,
  );
  results.help_title = answer.embeds[0]?.title ?? null;
  check(results.help_title === HELP_TITLE, `reply embed title ${results.help_title}`);

  // Reply with an embed, react, edit, delete.
  step = 'replying with an embed';
  const embed = new EmbedBuilder().setTitle('Seen').addFields({ name: 'latency', value: 'fine' });
  const reply = await answer.reply({ embeds: [embed] });
  results.reply_embed = reply.embeds[0].toJSON();
  check(reply.reference?.messageId === answer.id, 'the reply does not reference the answer');

  step = 'reacting';
  const reacted = next(client, Events.MessageReactionAdd, 'MESSAGE_REACTION_ADD', (r, u) =>
    r.message.id === reply.id && u.id === client.user.id ? r : undefined,
  );
  const reaction = await reply.react('👍');
  const seen = await reacted;
  results.reaction = { emoji: seen.emoji.name, count: reaction.count, me: reaction.me };
  const unreacted = next(client, Events.MessageReactionRemove, 'MESSAGE_REACTION_REMOVE', (r, u) =>
    r.message.id === reply.id && u.id === client.user.id ? r : undefined,
  );
  await reaction.users.remove(client.user.id);
  await unreacted;
  results.reaction_removed = true;

  step = 'editing';
  const updated = next(client, Events.MessageUpdate, 'MESSAGE_UPDATE', (_, m) => (m.id === reply.id ? m : undefined));
  const edited = await reply.edit({ content: 'edited', embeds: [embed.setDescription('after an edit')] });
  check(edited.content === 'edited', `edited content ${edited.content}`);
  // Discord stores embeds normalised; discord.js compares with what it sent.
  check(edited.embeds[0].equals(embed.toJSON()), `the edited embed differs: ${JSON.stringify(edited.embeds[0])}`);
  results.edited = (await updated).content;

  step = 'deleting';
  const deleted = next(client, Events.MessageDelete, 'MESSAGE_DELETE', (m) => (m.id === reply.id ? true : undefined));
  await reply.delete();
  await deleted;
  results.deleted = true;

  step = 'setting a presence';
  const presence = client.user.setPresence({
    status: 'idle',
    activities: [{ name: 'the sandbox', type: ActivityType.Watching }],
  });
  results.presence = { status: presence.status, activity: presence.activities[0]?.name ?? null };

  // A 4000 close: discord.js reconnects and resumes the session.
  const resumed = next(client, Events.ShardResume, 'RESUMED', () => true);
  await control(describe, `/gateway/${accountName}/close`, { code: 4000 });
  await resumed;
  results.resumed = true;
  const afterResume = await channel.send('after the resume');
  results.sent_after_resume = afterResume.content;

  // A forced 429 on the next send: discord.js waits retry_after and retries.
  await control(describe, '/faults/http', { method: 'POST', path: '/channels/*/messages', status: 429, count: 1 });
  step = 'sending through a 429';
  const before = statuses.length;
  const retried = await channel.send('after a 429');
  results.sent_after_429 = retried.content;
  results.statuses_for_that_send = statuses.slice(before);

  step = 'fetching the application';
  const app = await client.application.fetch();
  results.application = { id: app.id, name: app.name, owner: app.owner?.id ?? null };
}

async function main() {
  let describe;
  try {
    describe = JSON.parse(fs.readFileSync(describePath, 'utf8'));
  } catch (e) {
    usageError(`cannot read the description ${describePath}: ${e.message}`);
  }
  const client = new Client({
    intents: [
      GatewayIntentBits.Guilds,
      GatewayIntentBits.GuildMessages,
      GatewayIntentBits.MessageContent,
      GatewayIntentBits.GuildMessageReactions,
    ],
    // The one change from a bot on Discord.
    rest: { api: `${describe.rest_base}/api` },
  });
  client.on(Events.Warn, (m) => complaints.push(`warn: ${m}`));
  client.on(Events.Error, (e) => complaints.push(`error: ${e}`));
  process.on('warning', (w) => complaints.push(`process warning: ${w.name}: ${w.message}`));

  let error = null;
  let timer;
  try {
    await Promise.race([
      run(describe, client),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CheckFailed(`timed out after ${OVERALL_TIMEOUT_MS} ms ${step}`)), OVERALL_TIMEOUT_MS);
      }),
    ]);
  } catch (e) {
    error = e instanceof CheckFailed ? e.message : `${e.name}: ${e.message} (${step})`;
    if (!(e instanceof CheckFailed)) console.error(e);
  } finally {
    clearTimeout(timer);
    await client.destroy();
  }
  results.library_warnings = complaints;
  if (error === null && complaints.length > 0) error = `discord.js complained: ${complaints[0]}`;
  results.ok = error === null;
  if (error !== null) {
    results.error = error;
    console.error(`discordjs_client: FAILED: ${error}`);
  }
  console.log(JSON.stringify(results));
  process.exit(error === null ? 0 : 1);
}

main();
